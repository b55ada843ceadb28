"""Command line over the pipeline stages: `python -m sipe train|maps|eval|stages|scan|certify ...`.

Examples::

  python -m sipe stages --profile subset                  # every unit of the study, in turn (resumable)
  python -m sipe stages --profile subset --units sipe-s15 cam-s15 segmentation-s15
  python -m sipe stages --profile subset --recompute --units sipe-s15   # again from training (old folders kept)
  python -m sipe stages --profile subset --rung lite2     # a rung of the ladder into results/ladder/lite2
  python -m sipe ladder                                   # the ladder's rungs and their estimated cost
  python -m sipe figure-inputs --profile subset           # the inputs of Figs. 1, 3, 5, 7 into results/subset/figures
  python -m sipe train --profile subset --variant sipe
  python -m sipe train --profile subset --variant sccam   # the CAM baseline (round 0), then SC-CAM's rounds
  python -m sipe maps  --profile subset --variant cam
  python -m sipe eval  --profile subset --variant sipe --crf
  python -m sipe scan  --data-root /data/VOC2012 --split train_aug
  python -m sipe certify --before OLD/results --after NEW/results --units sipe-s15 cam-s15 \
      --restamp sipe-s15 cam-s15 ... --results-dir results/subset   # a stage-code change that moved no number

Settings: --set section.field=value (repeatable), e.g. --set model.bg_scale=0.5 --set train.epochs=3
--set irn.epochs=2 --set seg.lr=0.001 (the segmentation unit's IRN and segmentation-net settings).
Several processes (DDP training, sharded maps; train.batch_size is the global batch)::

  python -m sipe stages --profile paper --nproc 4         # re-executes itself under torchrun on this machine
  torchrun --nproc_per_node=4 -m sipe stages --profile paper           # the same, by hand
  torchrun --nnodes=2 --node_rank=0 --nproc_per_node=4 --master_addr=HOST --master_port=29500 -m sipe stages ...

A setting, data or device the user can fix stops the command with one line `error: ...` and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .infra.config import (PROFILES, SCCAM, VARIANTS, DATA_ROOT_ENV, WORK_DIR_ENV, ConfigError, ExperimentConfig,
    default_work_dir, get_profile, variant_config)
from .infra import distributed
from .infra.errors import cli_entry
from .method.backbones import check_config
from .study.records import PUBLISHED_PROFILES


def _parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected section.field=value")
        out[key.strip()] = value.strip()
    return out


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    overrides = _parse_sets(args.set)
    if args.data_root:
        overrides["data.root"] = args.data_root
    if args.device:
        overrides["device"] = args.device
    cfg = get_profile(args.profile, **overrides)
    check_config(cfg)
    return cfg


def ladder_table(args: argparse.Namespace) -> int:
    """`python -m sipe ladder [--results-dir DIR]`: each rung's overrides, units and estimated hours (from the
    stage times of the units in DIR, default results/subset), the total and the budget it is checked against, and the
    hours each rung's computed units took (`ladder.measured_hours`)."""
    from .study import ladder

    table = ladder.budget(measured_dir=args.results_dir or None)
    projected = ladder.projection(ladder.unit_budget(measured_dir=args.results_dir or None), ladder.measured_unit_hours())
    print(ladder.budget_markdown(table, measured=ladder.measured_hours(), projected=projected), end="")
    return 0 if table["total_h"].sum() <= ladder.BUDGET_HOURS else 1


def certify(args: argparse.Namespace) -> int:
    """`python -m sipe certify --before OLD --after NEW --units U... [--restamp U... --results-dir DIR]`."""
    from .study import certify as cert

    if not (args.before and args.after and args.units):
        raise ConfigError("certify needs --before, --after and --units: the results folders of the same units "
                          "computed with the old and the new code")
    comparison = cert.compare(args.before, args.after, args.units)
    print(comparison.to_string(index=False))
    if args.restamp is None:
        return 0 if comparison["identical"].all() else 1
    if not args.results_dir:
        raise ConfigError("certify --restamp needs --results-dir: the folder of the records to re-stamp")
    certificate = cert.certificate(comparison, args.after)
    for path in cert.restamp(args.results_dir, args.restamp, certificate, own_code_evidence=args.own_code_evidence):
        print(f"re-stamped {path}")
    return 0


def figure_inputs(cfg: ExperimentConfig, work: Path, results_dir: str) -> int:
    """Write the inputs of the figures that show trained models (`sipe.study.figinputs`) from the finished
    units in `work`; one line per figure. Exit status 1 when one is still waiting for its units."""
    from .study import figinputs
    from .study.chapters import Study
    from .study.records import results_dir_for

    study = Study(cfg, work, Path(results_dir) if results_dir else results_dir_for(cfg.profile, work), compute=False)
    outcomes = figinputs.write_all(study)
    for name, outcome in outcomes.items():
        print(f"figure inputs {name}: {outcome} ({figinputs.record_path(study.results_dir, name)})")
    return int(any(o.startswith("waiting") for o in outcomes.values()))


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sipe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["train", "maps", "eval", "stages", "scan", "show-config", "certify",
                                            "ladder", "figure-inputs"])
    parser.add_argument("--profile", choices=PROFILES, default="smoke")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="sipe")
    parser.add_argument("--data-root", default="", help=f"dataset root (default: ${DATA_ROOT_ENV})")
    parser.add_argument("--work-dir", default="", help=f"cache of runs and maps (default: ${WORK_DIR_ENV}/<profile>, else work/<profile>)")
    parser.add_argument("--device", default="", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--split", default="", help="scan: split to check (default: the training split)")
    parser.add_argument("--which", default="is_cam", help="eval: map key (is_cam, cam, is_cam@argmax, ...)")
    parser.add_argument("--crf", action="store_true", help="eval: also denseCRF post-processing")
    parser.add_argument("--units", nargs="+", default=None, metavar="VARIANT-sSEED",
                        help="stages: only these units (default: the profile's whole plan, segmentation units last)")
    parser.add_argument("--recompute", action="store_true", help="stages: compute the --units again from their "
                        "training on (e.g. after their stage code changed); their old folders are renamed, not deleted")
    parser.add_argument("--results-dir", default="", help="stages: results folder (default: results/<profile> "
                        "for subset/paper, <work dir>/results for smoke; a rung's: results/ladder/<rung>)")
    parser.add_argument("--rung", default="", help="stages, show-config: a rung of the ladder (sipe/study/ladder.py "
                        "RUNGS): its settings over the profile's, its units and its results folder")
    parser.add_argument("--before", default="", help="certify: results folder of the units computed with the old code")
    parser.add_argument("--after", default="", help="certify: results folder of the same units computed with the new code")
    parser.add_argument("--restamp", nargs="*", default=None, metavar="UNIT",
                        help="certify: when every --units compares identical, re-stamp these units' records in "
                        "--results-dir with the current stage code and the certificate")
    parser.add_argument("--own-code-evidence", default="", help="certify --restamp: also re-stamp each unit kind's "
                        "own code (SC-CAM's rounds, the segmentation stages), naming what shows it moved no number")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--nproc", type=int, default=1, help="train/maps/eval/stages: processes on this machine "
                        "(> 1 re-executes the command under torchrun: one per GPU, or gloo on CPU)")
    args = parser.parse_args(argv)
    distributed.quiet_other_ranks()

    if args.command == "certify":
        return certify(args)
    if args.command == "ladder":
        return ladder_table(args)
    cfg = config_from_args(args)
    work = Path(args.work_dir) if args.work_dir else default_work_dir(args.profile)
    rung = None
    if args.rung:
        from .study import ladder

        if args.command not in ("stages", "show-config"):
            raise ConfigError(f"--rung applies to the stages and show-config commands, not {args.command}")
        rung = ladder.get_rung(args.rung)
        cfg = ladder.rung_config(rung, cfg)
        if not args.results_dir:
            args.results_dir = str(ladder.rung_results_dir(cfg.profile, work, rung.name))
    progress = not args.no_progress
    if args.command == "show-config":
        print(json.dumps(variant_config(cfg, args.variant).to_dict(), indent=2))
        return 0
    if args.command == "scan":
        from .data.voc import scan_dataset

        report = scan_dataset(cfg.data.resolved_root(), args.split or cfg.data.train_split)
        print(report.summary())
        return 0 if report.ok else 1
    from .study import pipeline, units
    from .study.records import results_dir_for
    from .infra.runtime import resolve_device

    resolve_device(cfg.device)  # 'cuda' without a GPU fails here, before any file is written
    if args.command == "figure-inputs":
        return figure_inputs(cfg, work, args.results_dir)
    if args.nproc < 1:
        raise ConfigError(f"--nproc {args.nproc}: the number of processes must be at least 1")
    if args.nproc > 1 and not distributed.launched():
        if args.command in ("train", "stages"):
            distributed.local_batch(cfg.train.batch_size, args.nproc)
        given = list(sys.argv[1:] if argv is None else argv)
        return distributed.launch(["-m", "sipe", *distributed.strip_nproc(given)], args.nproc)
    if args.command == "stages":
        from .study import plan

        todo = rung.units if rung is not None else plan.plan(cfg)
        if args.units:
            by_name = {u.name: u for u in todo}
            unknown = [n for n in args.units if n not in by_name]
            if unknown:
                where = f"rung {rung.name}" if rung is not None else cfg.profile
                raise ConfigError(f"--units {unknown} not in the {where} plan: {sorted(by_name)}")
            todo = [by_name[n] for n in args.units]
        if args.recompute:
            if not args.units:
                raise ConfigError("--recompute needs --units: name the units to compute again")
            results_dir = Path(args.results_dir) if args.results_dir else results_dir_for(cfg.profile, work)
            for unit in todo:
                moved = plan.set_aside(cfg, work, results_dir, unit)
                print(f"{unit.name}: results record removed; set aside: {', '.join(str(m) for m in moved) or 'no folder'}")
        plan.run_plan(cfg, work, args.results_dir or None, todo, progress=progress)
        if rung is None and cfg.profile in PUBLISHED_PROFILES and distributed.is_main():
            figure_inputs(cfg, work, args.results_dir)
        return 0
    sccam = units.trained_sccam(cfg, work, progress=progress)[0] if args.variant == SCCAM else None
    if args.command == "train":
        result = sccam or pipeline.trained(cfg, work, args.variant, progress=progress)
        print(f"{'reused' if result.reused else 'trained'}: {result.checkpoint}")
        return 0
    maps_dir = pipeline.maps(cfg, work, args.variant, progress=progress)
    if args.command == "maps":
        print(f"maps: {maps_dir}")
        return 0
    if not distributed.is_main():
        return 0
    from .stages import evaluation

    vcfg = variant_config(cfg, args.variant)
    root = vcfg.data.resolved_root()
    ids = evaluation.map_ids(maps_dir)
    scoring = evaluation.Scoring(progress=progress)
    est = evaluation.evaluate_maps(maps_dir, root, ids, which=args.which, mode="estimated", scoring=scoring)
    print(f"estimated background: mIoU {est.miou:.2f} ({est.note})")
    sweep = evaluation.evaluate_maps(maps_dir, root, ids, which=args.which, mode="threshold",
                                     thresholds=vcfg.eval.thresholds, scoring=scoring)
    print(f"threshold background: best mIoU {sweep.best.miou:.2f} at t={sweep.best_threshold}")
    if args.crf:
        from .stages.crf import evaluate_crf

        e = vcfg.eval
        crf = evaluate_crf(maps_dir, root, ids, which=args.which, bg_scale=e.crf_bg_scale, t=e.crf_iterations,
                           gt_prob=e.crf_gt_prob, scoring=scoring)
        print(f"+denseCRF: mIoU {crf.void_as_background.miou:.2f} ({crf.void_as_background.note})")
    return 0

if __name__ == "__main__":
    sys.exit(main())
