"""`distill` command line.

    distill train recipe=NAME [key=value ...]      one training run (KD or fine-tuning), Hydra overrides
    distill pipeline recipe=NAME [key=value ...]   fine-tune teacher → distill → no-KD baseline → compare → export
    distill compare run=RUN_DIR | teacher=DIR students=[DIR,...] [baseline=DIR] data=NAME [out=DIR] [threads=N]
                    [max_length=N] [teacher_onnx=true|false]  (default: the teacher is also exported and
                    timed in onnxruntime, fp32 and int8, when a student is an .onnx file)
    distill export run=RUN_DIR | model=DIR [formats=[hf,onnx,int8,torchscript]] [trim_vocab=true] [data=NAME]
                   [max_length=N]  (default: the run's or data's data.max_length) [optimize=false]  (no
                   onnxruntime transformer fusions) [vocab_size=N]  (trimmed: the training split's tokens, then
                   those the model trained on, up to N; default: the run's export.vocab_size, else the split's alone)
    distill predict model=DIR|RUN_DIR|FILE.onnx input=FILE.csv|.tsv|.jsonl|.txt|- [output=preds.csv]
                    [text_column=text] [max_length=N] [batch_size=32]  labels (+ probabilities) per row
    distill recipes                                 list the ready recipes
    distill check                                   packaged teacher, 2-layer student, parity vs transformers

Every user mistake ends in one line on stderr (exit 1) saying what to change.
"""

from __future__ import annotations

import atexit
import gc
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from distill.errors import DistillError

USAGE = __doc__.split("\n\n")[1]
USAGE_END = __doc__.split("\n\n")[2].strip()
log = logging.getLogger("distill")


def _usage(command: str) -> str:
    """The lines of USAGE about ``command``."""
    lines, keep = [], False
    for line in USAGE.splitlines():
        if line.startswith("    distill "):
            keep = line.startswith(f"    distill {command} ")
        if keep:
            lines.append(line)
    return "\n".join(["usage:", *lines, "", USAGE_END])


def _unwrap(e: BaseException) -> BaseException:
    """Hydra wraps errors raised inside instantiate(); the user wants the original, on one line.

    A constructor given a key it does not take (TypeError) is a config mistake too."""
    key = ""
    while e.__cause__ is not None and type(e).__name__ in ("InstantiationException", "HydraException"):
        key = next((ln.split(":", 1)[1].strip() for ln in str(e).splitlines() if ln.startswith("full_key:")), key)
        e = e.__cause__
    if isinstance(e, TypeError) and "argument" in str(e):
        return DistillError(f"{key or 'config'}: {e}; remove or rename that key")
    return e


def _hydra_app(task, overrides: list[str]) -> None:
    """Run ``task(cfg, run_dir)`` as a Hydra app (run dirs, -m sweeps, --cfg job), argv already set.

    Hydra composes the config, once; its composition errors reach us as exceptions (HYDRA_FULL_ERROR,
    instead of Hydra printing them) and become one line naming the key and what is valid."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import ConfigCompositionException, OverrideParseException

    from distill.config_check import check_values, explain

    @hydra.main(config_path="conf", config_name="config", version_base="1.3")
    def app(cfg):
        run_dir = HydraConfig.get().runtime.output_dir
        try:
            try:
                check_values(cfg)
                if task is _train and cfg.get("auto") is not None:
                    raise DistillError("recipe=auto trains several students and ships one: run it with "
                                       "`distill pipeline recipe=auto ...`")
            except DistillError:
                _drop_unused(run_dir)  # a config mistake: no run happened, so no run dir stays behind
                raise
            return task(cfg, run_dir)
        except Exception as e:
            inner = _unwrap(e)
            if isinstance(inner, DistillError):
                print(f"error: {inner}", file=sys.stderr)
                sys.exit(1)
            raise

    before = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        app()
    except (ConfigCompositionException, OverrideParseException) as e:
        raise explain(e, overrides) from None
    finally:
        if before is None:
            del os.environ["HYDRA_FULL_ERROR"]
        else:
            os.environ["HYDRA_FULL_ERROR"] = before


def _drop_unused(run_dir: str) -> None:
    """Remove a run dir that holds only what Hydra wrote on entering it (``.hydra/``, the job's log);
    a dir with anything else in it (a run to resume) is left as it is."""
    folder = Path(run_dir)
    entries = list(folder.iterdir()) if folder.is_dir() else []
    if all(e.name == ".hydra" or (e.is_file() and e.suffix == ".log") for e in entries):
        shutil.rmtree(folder, ignore_errors=True)


def _check_run_dir(overrides: list[str]) -> None:
    """The run dir (the one given, else the default under ./outputs) must be, or be creatable as, a dir we
    can write in: Hydra writes its record and log there before our code runs (its own trace otherwise)."""
    given = dict(o.lstrip("+").partition("=")[::2] for o in overrides
                 if o.lstrip("+").startswith(("hydra.run.dir=", "hydra.sweep.dir=")))
    for key, value in (given or {"hydra.run.dir": "outputs"}).items():
        path = Path(value)  # as Hydra makes it: no ~ expansion
        if path.exists() and not path.is_dir():
            raise DistillError(f"{key}={value} is a file, not a dir; point {key} at a new or existing dir")
        existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
        if not os.access(existing, os.W_OK | os.X_OK):
            where = f"the run dir {value}" if existing == path.absolute() else f"{existing}, where the run dir " \
                f"{value}{'' if given else '/...'} would be made"
            raise DistillError(f"cannot write in {where}; make it writable or point {key} at a dir you can write in")


def _rank_overrides() -> list[str]:
    """Processes other than rank 0 of a multi-process launch share rank 0's run dir: they leave its
    ``.hydra/`` record and its log file to rank 0 and print warnings only."""
    from distill import launch

    launch.register_resolvers()
    if launch.single_cpu_process_of_several():
        log.warning("accelerate launch --cpu starts ONE process (several only through --mpirun_hostfile); for N "
                    "processes on CPU use accelerate launch --multi_gpu --num_processes N (or torchrun)")
    if launch.rank() == 0:
        return []
    return ["hydra.output_subdir=null", "~hydra.job_logging.handlers.file", "hydra.job_logging.root.handlers=[console]",
            "hydra.job_logging.root.level=WARNING"]


def _train(cfg, out_dir):
    from distill.run import run_training

    metrics = run_training(cfg, out_dir)
    if not metrics:  # not rank 0 of a multi-process launch: rank 0 reports
        return
    print(json.dumps({k: metrics[k] for k in ("student", "teacher") if k in metrics}))
    print(f"run dir: {out_dir}")


def _pipeline(cfg, out_dir):
    from distill.report import table as markdown_table

    if cfg.get("auto") is not None:  # recipe=auto: several students, one shipped
        from distill.auto import run_auto as run
    else:
        from distill.pipeline import run_pipeline as run
    result = run(cfg, out_dir)
    if not result:  # not rank 0 of a multi-process launch: rank 0 reports
        return
    print(markdown_table(result["report"]))
    for line in result["report"]["notes"]:  # which differences are significant, as `distill compare` prints them
        print(f"- {line}")
    for line in result["exports"]:
        from distill.export import summary_line

        print(summary_line(line))
    if "auto" in result:
        print(("shipped: " if result["auto"]["target_met"] else "TARGET NOT MET: ") + result["auto"]["why"])
    print(f"run dir: {out_dir}")


PATH_KEYS = ("run", "model", "teacher", "students", "baseline", "out", "data", "input", "output")
KEYS = {  # each command's keys (data.* too where it takes data=): anything else is a typo, not a default
    "compare": ("run", "teacher", "students", "baseline", "data", "out", "split", "threads", "max_length",
                "teacher_onnx"),
    "export": ("run", "model", "out", "data", "formats", "trim_vocab", "max_length", "optimize", "vocab_size"),
    "predict": ("model", "input", "output", "text_column", "max_length", "batch_size"),
}


def _kv(args: list[str], command: str) -> dict[str, object]:
    """``key=value`` args. Paths (PATH_KEYS) are kept as written — ``run=outputs/lr=1e-4,epochs=2``,
    ``run=2026``, ``~/runs/x`` — and ``[a,b]`` is a list of them; ``data.*`` keys are kept whole (for
    composing the data node); any other value is read with Hydra's override grammar, as `distill train`
    reads it (``[hf,onnx]`` a list, ``true`` a bool, ``64`` an int). A key outside ``KEYS[command]`` is refused."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    out: dict[str, object] = {}
    for arg in args:
        key, sep, raw = arg.partition("=")
        if not sep or not key:
            raise DistillError(f"argument {arg!r} is not key=value; see `distill {command} --help`")
        if key not in KEYS[command] and not (key.startswith("data.") and "data" in KEYS[command]):
            takes = " ".join(f"{k}=" for k in KEYS[command]) + (" data.*" if "data" in KEYS[command] else "")
            raise DistillError(f"unknown key {key!r}; distill {command} takes {takes}")
        if key.startswith("data."):
            out[key] = arg
        elif key in PATH_KEYS:
            listed = raw.startswith("[") and raw.endswith("]")
            out[key] = [v.strip() for v in raw[1:-1].split(",") if v.strip()] if listed else raw
        else:
            try:
                out[key] = OverridesParser.create().parse_overrides([arg])[0].value()
            except OverrideParseException as e:
                raise DistillError(f"cannot parse {arg!r}: {str(e).splitlines()[0]}; "
                                   f"see `distill {command} --help`") from None
    return out


def _short_names(paths: list[str]) -> list[str]:
    """The shortest path suffix that tells each model apart (export/int8/model.onnx → int8/model.onnx)."""
    parts = [Path(p).parts for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return list(paths)


def _data(name: str, extra: dict) -> tuple[object, int]:
    """The data node ``name`` (with ``data.*`` overrides) → (TaskData, its max_length)."""
    import hydra

    from distill.config_check import compose_checked

    overrides = [f"data={name}"] + [line for key, line in extra.items() if key.startswith("data.")]
    node = compose_checked(overrides).data
    return hydra.utils.instantiate(node.source), int(node.max_length)


def _run_models(run: Path) -> tuple[dict[str, str], str | None, dict]:
    """A run dir → its models and config: a pipeline run's teacher, KD student and baseline dirs; a
    `distill train` run's student, and its teacher when the run read one saved model (``name_or_path``)."""
    from omegaconf import OmegaConf

    if not (run / ".hydra" / "config.yaml").is_file():
        raise DistillError(f"{run} holds no .hydra/config.yaml, so it is not a distill run dir; pass model=DIR "
                           "(export, predict) or teacher=DIR students=[DIR,...] data=NAME (compare)")
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    if (run / "student").is_dir() and not (run / "pipeline.json").is_file():  # a `distill train` run dir
        teacher = (cfg.get("teacher") or {}).get("name_or_path")
        models = {"teacher": str(teacher)} if isinstance(teacher, str) else {}
        return {**models, "student (KD)": str(run / "student")}, None, cfg
    if not (run / "pipeline.json").is_file():
        raise DistillError(f"{run} is not a pipeline run dir (no pipeline.json) nor a train run dir (no student/); "
                           "pass teacher=DIR students=[DIR,...] data=NAME (compare) or model=DIR (export)")
    stages = json.loads((run / "pipeline.json").read_text())
    models = {"teacher": stages["teacher"], "student (KD)": str(Path(stages["distill"]) / "student")}
    if "baseline" in stages:  # recipe=auto's run dir: the shipped student, no baseline
        models["student (no KD)"] = str(Path(stages["baseline"]) / "student")
    if "max_length" in stages:  # recipe=auto sized it from the data: the recipe's value was not used
        cfg.data.max_length = stages["max_length"]
    return models, "student (no KD)" if "baseline" in stages else None, cfg


def compare_cmd(args: list[str]) -> None:
    import hydra

    from distill.compare import Measure, compare
    from distill.report import table as markdown_table

    kv = _kv(args, "compare")
    if "run" in kv:
        models, baseline, cfg = _run_models(Path(kv["run"]))
        if "teacher" not in models:  # a train run whose teacher was built, not read from one dir (e.g. teacher=tiny)
            raise DistillError(f"{kv['run']} is a `distill train` run whose teacher is not a saved model dir; pass "
                               f"teacher=DIR students=[{Path(kv['run']) / 'student'}] data=NAME")
        data, max_length = hydra.utils.instantiate(cfg.data.source), int(cfg.data.max_length)
        out = kv.get("out", kv["run"])
    else:
        if "teacher" not in kv or "students" not in kv or "data" not in kv:
            raise DistillError("compare needs run=RUN_DIR, or teacher=DIR students=[DIR,...] data=NAME")
        students = kv["students"] if isinstance(kv["students"], list) else [kv["students"]]
        names = dict(zip(students, _short_names(students)))
        models = {"teacher": kv["teacher"], **{name: path for path, name in names.items()}}
        if kv.get("baseline") not in (None, *students):
            raise DistillError(f"baseline={kv['baseline']} is not one of students={students}")
        baseline = names.get(kv.get("baseline"))  # each student is also tested against it (paired)
        (data, max_length), out = _data(kv["data"], kv), kv.get("out", "compare")
    report = compare(models, None, data, out_dir=out, teacher="teacher", baseline=baseline,
                     measure=Measure(split=kv.get("split"), threads=int(kv["threads"]) if "threads" in kv else None,
                                     max_length=int(kv.get("max_length", max_length)),
                                     teacher_onnx=bool(kv["teacher_onnx"]) if "teacher_onnx" in kv else None))
    print(markdown_table(report))
    for line in report["notes"]:
        print(f"- {line}")
    print(f"report: {Path(out) / 'report.md'}")


def export_cmd(args: list[str]) -> None:
    import hydra

    from distill.export import FORMATS, export, summary_line

    kv = _kv(args, "export")
    data, max_length, vocab_size = None, 128, None
    if "run" in kv:
        run = Path(kv["run"])
        models, _, cfg = _run_models(run)  # a pipeline's KD student, or a train run's student
        model, out = models["student (KD)"], run / "export"
        data, max_length = hydra.utils.instantiate(cfg.data.source), int(cfg.data.max_length)
        vocab_size = (cfg.get("export") or {}).get("vocab_size")
    elif "model" in kv:
        model, out = kv["model"], Path(kv.get("out", Path(kv["model"]) / "export"))
        if "data" in kv:
            data, max_length = _data(kv["data"], kv)
    else:
        raise DistillError("export needs run=RUN_DIR or model=DIR")
    formats = kv.get("formats", list(FORMATS))
    formats = formats if isinstance(formats, list) else [formats]
    trim = bool(kv.get("trim_vocab", False))
    texts = None
    if data is not None:
        from distill.data.corpus import train_texts

        texts = train_texts(data)
    elif trim:
        raise DistillError("trim_vocab=true needs the training texts: add data=NAME (or use run=RUN_DIR)")
    for line in export(model, out, formats=formats, trim_vocab=trim, texts=texts, eval_data=data,
                       max_length=int(kv.get("max_length", max_length)), optimize=bool(kv.get("optimize", True)),
                       vocab_size=kv.get("vocab_size", vocab_size)):
        print(summary_line(line))


def predict_cmd(args: list[str]) -> None:
    from distill.predict import predict_file

    kv = _kv(args, "predict")
    if "model" not in kv or "input" not in kv:
        raise DistillError("predict takes model=DIR (or FILE.onnx) input=FILE (or - for stdin) "
                           "[output= text_column= max_length= batch_size=]")
    model, max_length = Path(str(kv["model"])).expanduser(), 128  # a student dir or .onnx file: 128 unless given
    if not (model / "config.json").is_file() and (model / ".hydra" / "config.yaml").is_file():  # a run dir
        models, _, cfg = _run_models(model)
        model, max_length = Path(models["student (KD)"]), int(cfg.data.max_length)  # the length it trained at
    out = predict_file(str(model), str(kv["input"]), str(kv.get("output", "predictions.csv")),
                       text_column=str(kv.get("text_column", "text")),
                       max_length=int(kv.get("max_length", max_length)), batch_size=int(kv.get("batch_size", 32)))
    print(f"predictions: {out}")


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the `distill` program (not a call from Python): leave it ~1 s sooner on 2 cores
        atexit.register(gc.freeze)  # exit's last collections then skip the millions of objects torch & co. made
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in ("train", "pipeline"):  # Hydra sets up logging for those (a second handler doubles lines)
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if command in ("compare", "export", "predict", "check") and {"-h", "--help"} & set(rest):
            print(_usage(command))
        elif command == "recipes":
            from distill.config_check import recipe_descriptions

            for name, text in recipe_descriptions().items():
                print(f"{name:22s} {text}")
        elif command == "check":
            from distill.check import check

            check()
        elif command in ("train", "pipeline"):
            from hydra._internal.utils import get_args_parser  # Hydra's own command line: flags vs overrides

            from distill.config_check import check_choices, check_sweep

            hydra_args = get_args_parser().parse_args(rest)
            overrides = hydra_args.overrides
            check_choices(overrides)  # recipe=, data=, ... name configs that exist
            if hydra_args.multirun:
                check_sweep(overrides)  # a bad later value stops the sweep before job 0 trains
            _check_run_dir(overrides)
            flags = [a for a in rest if a not in set(overrides)]  # -m, --cfg job, --info defaults, ...
            sys.argv = [f"distill {command}", *flags, *overrides, *_rank_overrides()]
            try:
                _hydra_app(_train if command == "train" else _pipeline, overrides)
            except SystemExit as e:  # the app's one-line error exits inside Hydra's job (Hydra adds lines to others)
                return e.code if isinstance(e.code, int) else 1
        elif command == "compare":
            compare_cmd(rest)
        elif command == "export":
            export_cmd(rest)
        elif command == "predict":
            predict_cmd(rest)
        else:
            raise DistillError(f"unknown command {command!r}; use train, pipeline, compare, export, predict, recipes "
                               "or check")
    except DistillError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `distill recipes | head`: the reader left; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit-time flush must not fail again
        return 0
    except Exception as e:
        inner = _unwrap(e)
        if isinstance(inner, DistillError):
            print(f"error: {inner}", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
