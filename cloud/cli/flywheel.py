"""``citybrain flywheel``: tools of the data flywheel.

``citybrain flywheel simulate --images DIR --labels CSV --budgets 10,20,40
--strategy auto --strategy random --seeds 3 --out result.json`` replays
labeling on a folder the user brings (an oracle reveals the labels of what each
strategy selects), writes ``result.json`` and a learning-curve PNG beside it and
prints a table. As the flywheel does, it pretrains SimCLR on the pool's images
first and retrains the Train button's head every round.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import typer

from cloud.errors import InvalidInput

app = typer.Typer(
    name="flywheel",
    help="Data flywheel tools: simulate mining strategies on a labeled folder.",
    no_args_is_help=True,
)


def _read_labels(images: Path, labels: Path) -> tuple[list[Path], list[str]]:
    if not images.is_dir():
        raise InvalidInput(f"images directory {str(images)!r} does not exist", field="--images")
    if not labels.is_file():
        raise InvalidInput(f"labels file {str(labels)!r} does not exist", field="--labels")
    root = images.resolve()
    try:
        with labels.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [h.strip() for h in (reader.fieldnames or [])]
            if "path" not in fields or "label" not in fields:
                raise InvalidInput(
                    f"{labels}: header must name columns 'path,label', got {','.join(fields) or 'nothing'}",
                    field="--labels",
                )
            reader.fieldnames = fields
            rows = list(reader)
    except UnicodeDecodeError as e:
        raise InvalidInput(f"{labels}: not UTF-8 text ({e.reason})", field="--labels") from None
    except csv.Error as e:
        raise InvalidInput(f"{labels}: malformed CSV ({e})", field="--labels") from None
    if not rows:
        raise InvalidInput(f"{labels}: no rows after the header", field="--labels")
    paths: list[Path] = []
    names: list[str] = []
    seen: dict[str, int] = {}
    missing: list[str] = []
    for line, row in enumerate(rows, start=2):
        rel = (row.get("path") or "").strip()
        lab = (row.get("label") or "").strip()
        if not rel:
            raise InvalidInput(f"{labels}:{line}: empty path", field="--labels")
        if not lab:
            raise InvalidInput(f"{labels}:{line}: empty label for {rel!r}", field="--labels")
        p = (root / rel).resolve()
        if os.path.isabs(rel) or not p.is_relative_to(root):
            raise InvalidInput(
                f"{labels}:{line}: path {rel!r} points outside {images}", field="--labels"
            )
        if str(p) in seen:
            raise InvalidInput(
                f"{labels}:{line}: path {rel!r} already listed on line {seen[str(p)]}",
                field="--labels",
            )
        seen[str(p)] = line
        if not p.is_file():
            missing.append(rel)
        paths.append(p)
        names.append(lab)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise InvalidInput(
            f"{len(missing)} file(s) listed in {labels} are missing from {images}: "
            f"{', '.join(missing[:3])}{more}",
            field="--labels",
        )
    if len(set(names)) < 2:
        raise InvalidInput(
            f"{labels}: every row has the label {names[0]!r}; a learning curve needs at least "
            "two classes",
            field="--labels",
        )
    return paths, names


def _parse_budgets(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InvalidInput(
            f"budgets must be comma-separated integers, got {text!r}", field="--budgets"
        ) from None


@app.command()
def simulate(
    images: Path = typer.Option(..., "--images", help="Folder holding the images."),
    labels: Path = typer.Option(
        ..., "--labels", help="CSV with header path,label (paths relative to --images)."
    ),
    budgets: str = typer.Option(
        "10,20,40,80,160", "--budgets", help="Total labels at each round, increasing."
    ),
    strategy: list[str] = typer.Option(
        ["auto", "random"],
        "--strategy",
        help="Strategy to compare, repeatable: auto, random, least_confidence, margin, "
        "entropy, kcenter, typiclust, probcover, badge.",
    ),
    seeds: int = typer.Option(3, "--seeds", help="Repetitions per strategy."),
    out: Path = typer.Option(Path("result.json"), "--out", help="Where to write result.json."),
    extractor: str = typer.Option(
        "simclr",
        "--extractor",
        help="Features: simclr (self-supervised pretraining on the pool's own images, "
        "then its embeddings: what the flywheel does; ~10 min per 1,500 images at 30 "
        "epochs on 2 CPU cores) or hog-color-pca (fast, offline, ranks strategies less "
        "faithfully).",
    ),
    pretrain_epochs: int = typer.Option(
        30, "--pretrain-epochs", help="SimCLR epochs on the pool (--extractor simclr)."
    ),
    trainer: str = typer.Option(
        "flywheel-head",
        "--trainer",
        help="Model retrained each round: flywheel-head (the Train button's "
        "frozen-embedding head) or logistic (sklearn, no class weights).",
    ),
    split_seed: int = typer.Option(0, "--split-seed", help="Seed of the stratified test split."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
) -> None:
    """Compare mining strategies on a labeled folder before paying annotators."""
    from collections import Counter

    import numpy as np
    from rich.console import Console
    from rich.progress import Progress

    from cloud.flywheel.mining import (
        EXTRACTORS,
        TRAINERS,
        check_budgets,
        extract_features,
        format_table,
        make_strategy,
        plot_curves,
        stratified_split,
    )
    from cloud.flywheel.mining import (
        simulate as run_simulation,
    )

    # every check before any compute
    png = out.with_suffix(".png")
    for target in (out, png):
        if target.exists() and not overwrite:
            raise InvalidInput(
                f"{target} already exists; pass --overwrite to replace it", field="--out"
            )
    if not out.parent.exists():
        raise InvalidInput(f"output folder {out.parent} does not exist", field="--out")
    b = _parse_budgets(budgets)
    if seeds < 1:
        raise InvalidInput(f"--seeds must be at least 1, got {seeds}", field="--seeds")
    names = list(dict.fromkeys(strategy))
    for name in names:
        make_strategy(name)
    if extractor not in EXTRACTORS:
        raise InvalidInput(
            f"unknown extractor {extractor!r}; one of {', '.join(sorted(EXTRACTORS))}",
            field="--extractor",
        )
    if trainer not in TRAINERS:
        raise InvalidInput(
            f"unknown trainer {trainer!r}; one of {', '.join(sorted(TRAINERS))}",
            field="--trainer",
        )
    if pretrain_epochs < 1:
        raise InvalidInput(
            f"--pretrain-epochs must be at least 1, got {pretrain_epochs}",
            field="--pretrain-epochs",
        )
    paths, label_names = _read_labels(images, labels)
    y = np.asarray(label_names)
    pool, _ = stratified_split(y, 0.2, split_seed)
    check_budgets(b, pool.size)

    err = Console(stderr=True)
    counts = Counter(label_names)
    err.print(
        f"{len(paths)} images, {len(counts)} classes "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))}); "
        f"pool {pool.size}, test {len(paths) - pool.size}"
    )
    opts = {"epochs": pretrain_epochs} if extractor == "simclr" else {}
    with Progress(console=err, transient=True) as bar:
        what = f"{pretrain_epochs} epochs of SimCLR on the pool" if opts else extractor
        task = bar.add_task(f"features ({what})", total=len(paths))
        feats = extract_features(
            extractor, paths, lambda i, n: bar.update(task, completed=i, total=n), **opts
        )
    result = run_simulation(
        feats,
        y,
        b,
        names,
        seeds=seeds,
        split_seed=split_seed,
        train_eval=TRAINERS[trainer],
        progress=lambda msg: err.print(msg),
    )
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp_png = png.with_suffix(".tmp.png")
    plot_curves(result, tmp_png)
    os.replace(tmp, out)
    os.replace(tmp_png, png)
    typer.echo(format_table(result))
    typer.echo(f"wrote {out} and {png}")
