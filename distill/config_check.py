"""Compose a config before anything runs, and turn every config mistake into one clear line.

Hydra's own messages span several lines and end in stack traces; a user who typed ``trainer.lrr``
or ``data=mrr`` needs one line saying what is valid instead.
"""

from __future__ import annotations

from importlib import resources

from hydra import compose, initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from distill.errors import DistillError

# the config groups of config.yaml's defaults list: teacher, student, data, losses, trainer, logger, augment
GROUPS = tuple(next(iter(d)) for d in OmegaConf.load(resources.files("distill") / "conf" / "config.yaml").defaults
               if isinstance(d, DictConfig))


def options(group: str) -> list[str]:
    """Config names available in a group (``recipes`` or one of GROUPS)."""
    root = resources.files("distill") / ("recipes" if group == "recipes" else f"conf/{group}")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def recipe_descriptions() -> dict[str, str]:
    """Recipe name → its one-line description (the ``description:`` key)."""
    out = {}
    for name in options("recipes"):
        text = (resources.files("distill") / "recipes" / f"{name}.yaml").read_text()
        line = next((ln for ln in text.splitlines() if ln.startswith("description:")), "description: ")
        out[name] = line.split(":", 1)[1].strip().strip('"')
    return out


def translate(args: list[str]) -> list[str]:
    """``recipe=NAME`` → Hydra's ``+recipes=NAME``; checks the recipe exists."""
    out = []
    for arg in args:
        if arg.startswith("recipe="):
            name = arg.split("=", 1)[1]
            if name not in options("recipes"):
                raise DistillError(f"unknown recipe {name!r}; valid recipes: {', '.join(options('recipes'))}")
            arg = f"+recipes={name}"
        out.append(arg)
    return out


def sweep_points(overrides: list[str]) -> list[list[str]]:
    """The single runs a ``-m`` sweep must be able to start, read with Hydra's own override parser:
    every sweep at its first value, then each other value of each sweep on its own (so a bad second
    value stops the sweep before job 0 trains, not after)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    options = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
               else [o.input_line] for o in parsed]
    first = [values[0] for values in options]
    return [first] + [first[:i] + [other] + first[i + 1:] for i, values in enumerate(options) for other in values[1:]]


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
              and o.get_key_element().split("@")[0] not in (*GROUPS, "recipes")]
    try:
        base = compose("config", overrides=[o.input_line for o in parsed if o not in values])
    except (ConfigCompositionException, OmegaConfBaseException):  # the mistake is in a group, ~ or + override
        return None, None
    return next((o.get_key_element() for o in values if not _has_key(base, o.get_key_element())), None), base


def compose_checked(overrides: list[str], multirun: bool = False) -> DictConfig:
    """Compose ``config.yaml`` with ``overrides`` (Hydra syntax, no flags), or raise a one-line
    DistillError; ``multirun``: every value of each sweep is checked."""
    overrides = [o for o in overrides if not o.startswith("hydra.")]  # the compose API has no hydra node
    if multirun:
        try:
            points = sweep_points(overrides)
        except OverrideParseException as e:
            raise DistillError(f"cannot parse override: {str(e).splitlines()[0]}") from None
        for point in points[1:]:
            compose_checked(point)
        overrides = points[0]
    for override in overrides:
        group, _, value = override.lstrip("+").partition("=")
        if group in GROUPS and value.lower() in ("null", "none", ""):  # Hydra: a ValueError from its defaults list
            hint = " (and losses=hard_only: fine-tuning)" if group == "teacher" else ""
            raise DistillError(f"{override}: a config group takes one of {', '.join(options(group))}; "
                               f"to drop the {group} use ~{group}{hint}")
    with initialize_config_module("distill.conf", version_base="1.3"):
        try:
            cfg = compose("config", overrides=overrides)
        except MissingConfigException as e:
            group = next((g for g in GROUPS if f"'{g}/" in str(e)), None)
            bad = next((o for o in overrides if group and o.split("=")[0].lstrip("+~") == group), "")
            if group:
                raise DistillError(f"unknown {group} {bad.split('=')[-1]!r}; valid choices: "
                                   f"{', '.join(options(group))}") from None
            raise DistillError(str(e).splitlines()[0]) from None
        except OverrideParseException as e:
            raise DistillError(f"cannot parse override: {str(e).splitlines()[0]}") from None
        except ConfigCompositionException as e:
            bad, base = _unknown_key(overrides)
            if bad is None:
                raise DistillError(" ".join(str(e).split()).split(". ")[0]) from None
            raise DistillError(f"unknown key {bad!r}; {_valid_keys(base, bad)}") from None
    check_values(cfg)
    return cfg


def _missing(cfg: DictConfig, prefix: str = ""):
    """Keys whose value is ``???`` (interpolations to them are not followed: they name the same key)."""
    for key in cfg:
        if OmegaConf.is_missing(cfg, key):
            yield f"{prefix}{key}"
        elif not OmegaConf.is_interpolation(cfg, key) and isinstance(cfg[key], DictConfig):
            yield from _missing(cfg[key], f"{prefix}{key}.")


def trainer_config(node: DictConfig):
    """The trainer node, type-checked against TrainerConfig (wrong types → one line)."""
    from distill.engine import TrainerConfig  # torch and accelerate load only when a run is configured

    values = OmegaConf.to_container(node, resolve=True)
    values.pop("_target_", None)
    schema = OmegaConf.structured(TrainerConfig)
    return TrainerConfig(**OmegaConf.to_container(OmegaConf.merge(schema, values)))


def check_values(cfg: DictConfig) -> None:
    """Missing required values (``???``) and trainer types, before any work starts."""
    missing = sorted(_missing(cfg))
    if missing:
        raise DistillError(f"missing required value {missing[0]}; add {missing[0]}=... to the command line")
    try:
        trainer_config(cfg.trainer)
    except OmegaConfBaseException as e:
        first = str(e).splitlines()[0]
        key = getattr(e, "full_key", None) or ""
        raise DistillError(f"trainer.{key.split('.')[-1]}: {first}") from None
    except TypeError as e:
        raise DistillError(f"trainer: {e}") from None
