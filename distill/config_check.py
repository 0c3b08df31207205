"""Compose a config before anything runs, and turn every config mistake into one clear line.

Hydra's own messages span several lines and end in stack traces; a user who typed ``trainer.lrr``
or ``data=mrr`` needs one line saying what is valid instead.
"""

from __future__ import annotations

from importlib import resources

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from distill import schema  # noqa: F401  registers the structured configs before anything composes
from distill.errors import DistillError

# the config groups of config.yaml's defaults list: teacher, student, data, losses, trainer, logger, augment, recipe
GROUPS = tuple(next(iter(d)) for d in OmegaConf.load(resources.files("distill") / "conf" / "config.yaml").defaults
               if isinstance(d, DictConfig))
# what to type instead of GROUP=null (a recipe's data.augment values outlive ~augment: null the node itself)
NULL_HINTS = {"teacher": "to drop the teacher use ~teacher (and losses=hard_only: fine-tuning)",
              "augment": "augmentation is off unless augment=words or a recipe turns it on; to turn a recipe's "
                         "off use data.augment=null",
              "recipe": "leave recipe out: no recipe is the default"}


def options(group: str) -> list[str]:
    """Config names available in a group (one of GROUPS)."""
    root = resources.files("distill") / "conf" / group
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def recipe_descriptions() -> dict[str, str]:
    """Recipe name → its one-line description (the ``description:`` key)."""
    root = resources.files("distill") / "conf" / "recipe"
    return {name: OmegaConf.load(root / f"{name}.yaml").get("description", "") for name in options("recipe")}


def check_choices(overrides: list[str]) -> None:
    """Every group choice on the command line (each value of a sweep too) names a config of its group:
    read with Hydra's override parser, checked against the group's files, before anything composes."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as e:
        raise DistillError(f"cannot parse override: {str(e).splitlines()[0]}") from None
    for o in parsed:
        group = o.get_key_element().split("@")[0]
        if group not in GROUPS or o.is_delete():
            continue
        for value in _sweep_values(o) if o.is_sweep_override() else [o.value()]:
            if value is None or str(value).lower() in ("null", "none", ""):  # Hydra: a ValueError, traced
                raise DistillError(f"{o.input_line}: a config group takes one of {', '.join(options(group))}; "
                                   f"{NULL_HINTS.get(group, f'to drop the {group} use ~{group}')}")
            elif str(value) not in options(group):
                valid = "valid recipes" if group == "recipe" else "valid choices"
                raise DistillError(f"unknown {group} {str(value)!r}; {valid}: {', '.join(options(group))}")


def sweep_points(overrides: list[str]) -> list[list[str]]:
    """The single runs a ``-m`` sweep must be able to start, read with Hydra's own override parser:
    every sweep at its first value, then each other value of each sweep on its own (so a bad second
    value stops the sweep before job 0 trains, not after)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    options = [[f"{o.get_key_element()}={v}" for v in _sweep_values(o)] if o.is_sweep_override()
               else [o.input_line] for o in parsed]
    first = [values[0] for values in options]
    return [first] + [first[:i] + [other] + first[i + 1:] for i, values in enumerate(options) for other in values[1:]]


def _sweep_values(o) -> list[str]:
    """A sweep's values as strings; ``glob(...)`` matched against the group's config names (Hydra expands it
    only once it composes)."""
    from hydra.core.override_parser.types import Glob

    value = o.value()
    if not isinstance(value, Glob):
        return list(o.sweep_string_iterator())
    group = o.get_key_element().split("@")[0]
    if group not in GROUPS:
        raise DistillError(f"{o.input_line}: glob() sweeps over a config group's names ({', '.join(GROUPS)})")
    names = value.filter(options(group))
    if not names:
        raise DistillError(f"{o.input_line} matches no {group}; valid choices: {', '.join(options(group))}")
    return names


def check_sweep(overrides: list[str]) -> None:
    """Each value of each sweep composes, before job 0 (Hydra composes each job as it starts it)."""
    for point in sweep_points([o for o in overrides if not o.startswith("hydra.")]):
        compose_checked(point)


def _valid_keys(base: DictConfig, dotted: str) -> str:
    """The keys valid where ``dotted`` goes wrong: under its deepest parent that exists."""
    parent = dotted.rsplit(".", 1)[0] if "." in dotted else ""
    while parent and not isinstance(OmegaConf.select(base, parent), DictConfig):
        parent = parent.rsplit(".", 1)[0] if "." in parent else ""
    node = OmegaConf.select(base, parent) if parent else base
    keys = [k for k in node if k != "_target_"]
    where = f"under {parent}" if parent else "at the top level"
    return f"valid keys {where}: {', '.join(map(str, keys))}" if keys else f"{parent} takes no keys"


def _has_key(cfg: DictConfig, dotted: str) -> bool:
    parent, _, leaf = dotted.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return isinstance(node, DictConfig) and leaf in node


def _unknown_key(overrides: list[str]) -> tuple[str | None, DictConfig]:
    """The first value override (``a.b=1``, read with Hydra's parser) whose key the config composed
    from the group choices alone does not have, and that config."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    values = [o for o in parsed if not (o.is_add() or o.is_delete() or o.is_force_add())
              and o.get_key_element().split("@")[0] not in GROUPS]
    try:
        base = compose("config", overrides=[o.input_line for o in parsed if o not in values])
    except (ConfigCompositionException, OmegaConfBaseException):  # the mistake is in a group, ~ or + override
        return None, None
    return next((o.get_key_element() for o in values if not _has_key(base, o.get_key_element())), None), base


def explain(e: Exception, overrides: list[str]) -> DistillError:
    """Hydra's composition error for ``overrides`` (group choices already checked) → one line: the
    unknown key and the keys valid there, else the first sentence of Hydra's message."""
    if isinstance(e, OverrideParseException):
        return DistillError(f"cannot parse override: {str(e).splitlines()[0]}")
    GlobalHydra.instance().clear()  # a failed compose or @hydra.main leaves it initialised
    with initialize_config_module("distill.conf", version_base="1.3"):
        bad, base = _unknown_key([o for o in overrides if not o.startswith("hydra.")])
    if bad is None:
        cause = f": {str(e.__cause__).splitlines()[0]}" if isinstance(e.__cause__, OmegaConfBaseException) else ""
        return DistillError(" ".join(str(e).split()).split(". ")[0] + cause)  # a wrong type: Hydra's, then OmegaConf's
    return DistillError(f"unknown key {bad!r}; {_valid_keys(base, bad)}")


def compose_checked(overrides: list[str]) -> DictConfig:
    """Compose ``config.yaml`` with ``overrides`` (Hydra syntax, no flags) through Hydra's compose API
    (scripts, tests, ``distill compare data=...``), or raise a one-line DistillError."""
    overrides = [o for o in overrides if not o.startswith("hydra.")]  # the compose API has no hydra node
    check_choices(overrides)
    try:
        with initialize_config_module("distill.conf", version_base="1.3"):
            cfg = compose("config", overrides=overrides)
    except (ConfigCompositionException, OverrideParseException) as e:
        raise explain(e, overrides) from None
    check_values(cfg)
    return cfg


def _missing(cfg: DictConfig, prefix: str = ""):
    """Keys whose value is ``???`` (interpolations to them are not followed: they name the same key)."""
    for key in cfg:
        if OmegaConf.is_missing(cfg, key):
            yield f"{prefix}{key}"
        elif not OmegaConf.is_interpolation(cfg, key) and isinstance(cfg[key], DictConfig):
            yield from _missing(cfg[key], f"{prefix}{key}.")


def trainer_config(node: DictConfig) -> schema.TrainerConfig:
    """A trainer node (composed: typed by ``trainer/schema``; a pipeline stage's: merged into it here)
    → TrainerConfig, its values checked."""
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node  # ${stage_root}
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema.TrainerConfig), values))


def target_config(node: DictConfig) -> schema.TargetConfig:
    """recipe=auto's ``target`` node → TargetConfig, typed and checked."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema.TargetConfig), node))
    except OmegaConfBaseException as e:
        raise DistillError(f"target: {e.msg}") from None


def augment_config(node: DictConfig):
    """The ``data.augment`` node → (``Augment`` settings, its ``mlm.model`` node, its ``mlm.extra_text``
    node or None), typed by the dataclass and its values checked."""
    from distill.data.augment import Augment

    values = OmegaConf.to_container(node, resolve=True)
    mlm = values.get("mlm") or {}
    model_node, extra_node = mlm.pop("model", None), mlm.pop("extra_text", None)
    if model_node is None:  # e.g. ~augment: the group's keys go, the recipe's data.augment values stay
        raise DistillError("data.augment.mlm.model is missing; set it to a model node, e.g. {_target_: "
                           "distill.models.hub.load_packaged_minilm}, or turn augmentation off with data.augment=null")
    try:
        settings = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Augment), values))
    except OmegaConfBaseException as e:  # a wrong key or type: OmegaConf names it
        raise DistillError(f"data.augment: {e.msg}") from None
    settings.check()
    return settings, model_node, extra_node


def check_values(cfg: DictConfig) -> None:
    """Missing required values (``???``) and impossible trainer settings (types were checked while
    composing), before any work starts."""
    missing = sorted(_missing(cfg))
    if missing:
        raise DistillError(f"missing required value {missing[0]}; add {missing[0]}=... to the command line")
    try:
        trainer = trainer_config(cfg.trainer)
    except OmegaConfBaseException as e:  # an interpolation that does not resolve
        raise DistillError(f"trainer.{getattr(e, 'key', '')}: {str(e).splitlines()[0]}") from None
    augment = OmegaConf.select(cfg, "data.augment", default=None)
    if augment is not None and not (cfg.get("auto") is not None and augment.get("n") == 0):  # auto: n=0 is none
        augment_config(augment)  # here, not after a pipeline's teacher stage
    if cfg.get("target") is not None:  # recipe=auto's constraint: checked before any stage trains
        target_config(cfg.target)
    if trainer.metric_for_best is not None:  # a typo stops here, not after a pipeline's teacher stage
        source = OmegaConf.select(cfg, "data.source", default=None)
        task = source.get("task") if isinstance(source, DictConfig) else None  # data=files says; named sources not
        from distill.evaluate import SELECTABLE, metric_for_best

        if task in SELECTABLE:
            metric_for_best(trainer.metric_for_best, task)
        elif all(trainer.metric_for_best not in names for names in SELECTABLE.values()):
            known = sorted({n for names in SELECTABLE.values() for n in names})
            raise DistillError(f"trainer.metric_for_best={trainer.metric_for_best!r} is no validation metric; use "
                               f"one of {', '.join(known)}")
