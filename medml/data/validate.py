"""Validation gate: a Great Expectations 1.x suite over the manifest.

Row-level expectations (file non-empty, decodes, label known) decide which files are
quarantined: they are listed in ``quarantine.csv`` with the reason and left out of
``clean_manifest.parquet``; the files themselves are never moved, changed or deleted.
Dataset-level expectations (enough images per class, not too many quarantined) are critical:
when one fails the step raises :class:`ValidationFailed` naming the counts and the report.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from medml.config import DataConfig, Recipe
from medml.data.images import MAX_PIXELS
from medml.data.ingest import absolute_paths, frames_of, ignored_by_extension
from medml.data.reuse import ReuseTable, code_identity
from medml.errors import DataGateFailed
from medml.io import parallel_map, publish_dir, render_html, write_json
from medml.layout import ValidationFiles
from medml.near_duplicates import thumbnail
from medml.preprocess import LoadImage
from medml.settings import set_library_defaults

# Importing Great Expectations logs an INFO line per public function it cannot document
# ("Skipping registering function …", hundreds): noise in any process that shows INFO (Airflow).
logging.getLogger("great_expectations._docs_decorators").setLevel(logging.WARNING)


class ValidationFailed(DataGateFailed):
    """A critical expectation failed; the message names the counts and the report path."""


@dataclass(frozen=True)
class ValidationResult:
    """What :func:`validate` wrote and decided."""

    clean_manifest: Path
    report: Path
    quarantine: Path
    images: int
    quarantined: int
    class_counts: dict[str, int]


def validate(
    manifest_path: Path, out_dir: Path, recipe: Recipe, *, workers: int = 0
) -> ValidationResult:
    """Validate a manifest, quarantine bad files and write the clean manifest.

    Args:
        manifest_path: ``manifest.parquet`` from ingest.
        out_dir: the validation folder (see :class:`~medml.layout.ValidationFiles`).
        recipe: the run's recipe (known classes, minimum per class, quarantine budget).
        workers: decoding threads; 0 means one per core.

    Returns:
        Paths of the outputs and the counts.

    Raises:
        ValidationFailed: a critical expectation failed (outputs are still written, so the
            report can be read).
    """
    files = ValidationFiles(Path(out_dir))
    manifest = pd.read_parquet(manifest_path)
    ignored = ignored_by_extension(manifest)
    manifest = manifest[~manifest["ignored"]].drop(columns="ignored").reset_index(drop=True)
    checked = with_row_checks(manifest, Path(manifest_path).parent, recipe, workers)
    with publish_dir(files.root) as staging:  # the folder appears whole, or not at all
        context = _gx_context(ValidationFiles(staging).data_docs)
        reasons, row_results = quarantine_reasons(checked, recipe.data, context)
        quarantine, clean = _set_apart(checked, reasons)
        counts = clean["label"].value_counts().reindex(recipe.data.classes, fill_value=0)
        critical, dataset_results = dataset_checks(counts, len(quarantine), len(manifest),
                                                   recipe.data, context)  # fmt: skip
        report = {
            "success": not critical,
            "page": str(files.html),
            "data_docs": str(files.data_docs / "index.html"),
            "critical_failures": critical,
            **_counted(len(manifest), quarantine, clean, counts, ignored, recipe.data),
            "expectations": _expectation_summary(row_results, dataset_results),
        }
        write_outputs(ValidationFiles(staging), report, quarantine, clean)
    if critical:
        raise ValidationFailed(
            "data validation failed: " + "; ".join(critical) + f". Report: {files.report} "
            f"(readable offline: {files.html}); "
            f"quarantined files are listed in {files.quarantine} (nothing was deleted)."
        )
    return ValidationResult(
        clean_manifest=files.clean_manifest,
        report=files.report,
        quarantine=files.quarantine,
        images=len(clean),
        quarantined=len(quarantine),
        class_counts=report["class_counts"],
    )


_CHECK_COLUMNS = ["decodable", "short_side", "long_side", "label_conflict"]


def _set_apart(
    checked: pd.DataFrame, reasons: dict[int, list[str]]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The quarantine list (the rows with reasons, and why) and the clean manifest (the rest,
    without the check columns)."""
    quarantine = checked.loc[sorted(reasons), ["path", "root", "label", "sha256", "bytes"]]
    quarantine = quarantine.assign(reason=["; ".join(reasons[i]) for i in quarantine.index])
    clean = checked.drop(index=list(reasons), columns=[*_CHECK_COLUMNS, "issue", "decode_error"])
    return quarantine, clean.reset_index(drop=True)


def _counted(
    total: int,
    quarantine: pd.DataFrame,
    clean: pd.DataFrame,
    counts: pd.Series,
    ignored: dict[str, int],
    data: DataConfig,
) -> dict[str, Any]:
    """The report's counts: images, quarantined, per class, ignored, group sources, frames."""
    return {
        "images": total,
        "quarantined": len(quarantine),
        "quarantined_fraction": round(len(quarantine) / max(1, total), 6),
        "class_counts": {str(k): int(v) for k, v in counts.items()},
        "imbalance_ratio": _imbalance_ratio(counts),
        "ignored": ignored,
        "ignored_summary": ignored_summary(ignored),
        "group_sources": clean["group_source"].value_counts().to_dict(),
        "multi_frame": {
            "policy": data.multi_frame,
            "files": int(clean.loc[clean["frames"] > 1, "path"].nunique()),
        },
    }


def with_row_checks(
    manifest: pd.DataFrame, manifest_dir: Path, recipe: Recipe, workers: int
) -> pd.DataFrame:
    """The manifest plus what the row expectations look at (decodes, sides, label conflicts)
    and each image's near-duplicate signature (``thumbnail``, for the split)."""
    decoded = _decode_and_hash(manifest, manifest_dir, recipe, workers)
    labels_per_hash = manifest[manifest["sha256"] != ""].groupby("sha256")["label"].nunique()
    width = [w or d.width for w, d in zip(manifest["width"], decoded, strict=True)]
    height = [h or d.height for h, d in zip(manifest["height"], decoded, strict=True)]
    manifest = manifest.assign(width=width, height=height)
    return manifest.assign(
        decodable=[d.error == "" for d in decoded],
        decode_error=[d.error for d in decoded],
        thumbnail=[d.thumbnail for d in decoded],
        short_side=manifest[["width", "height"]].min(axis=1),
        long_side=manifest[["width", "height"]].max(axis=1),
        label_conflict=manifest["sha256"].map(labels_per_hash).fillna(0).gt(1),
    )


def quarantine_reasons(
    checked: pd.DataFrame, data: DataConfig, context: Any
) -> tuple[dict[int, list[str]], list[dict[str, Any]]]:
    """Run the row expectations; returns the reasons per quarantined row and the GX results."""
    row_suite: list[tuple[Callable[[pd.Series], str], Any]] = [
        (lambda row: row["issue"], _gx_in_set("issue", [""])),
        (lambda row: "file is empty (0 bytes)", _gx_between("bytes", min_value=1)),
        (lambda row: row["decode_error"], _gx_in_set("decodable", [True])),
        (lambda row: f"label {row['label']!r} is not one of {data.classes}",
         _gx_in_set("label", data.classes)),
        (lambda row: f"image is {row['width']}x{row['height']}, smaller than "
                     f"data.min_image_side={data.min_image_side}",
         _gx_between("short_side", min_value=data.min_image_side)),
        (lambda row: f"image is {row['width']}x{row['height']}, larger than "
                     f"data.max_image_side={data.max_image_side}",
         _gx_between("long_side", min_value=0, max_value=data.max_image_side)),
        (lambda row: "the same image (sha256) appears under different labels",
         _gx_in_set("label_conflict", [False])),
    ]  # fmt: skip
    results = _run_suite(checked, [e for _, e in row_suite], "manifest_rows", context)
    usable = (checked["issue"] == "") & checked["decodable"]  # else its first reason says it
    reasons: dict[int, list[str]] = {}
    for (reason, _), result in zip(row_suite, results, strict=True):
        for index in result["unexpected_index_list"]:
            index = int(index)
            if not usable[index] and reasons.get(index):
                continue  # one reason is enough for a file that was never (fully) read
            reasons.setdefault(index, []).append(reason(checked.loc[index]))
    return reasons, results


def dataset_checks(
    counts: pd.Series, quarantined: int, total: int, data: DataConfig, context: Any
) -> tuple[list[str], list[dict[str, Any]]]:
    """The critical, dataset-level checks: enough images per class, not too many quarantined."""
    table = pd.DataFrame({"label": counts.index, "count": counts.to_numpy()})
    minimum = data.min_images_per_class
    results = _run_suite(table, [_gx_between("count", min_value=minimum)], "class_counts", context)
    critical: list[str] = []
    if not results[0]["success"]:
        short = {row.label: int(row.count) for row in table.itertuples() if row.count < minimum}
        critical.append(f"classes below the minimum of {minimum} images: {short}")
    fraction = quarantined / max(1, total)
    if fraction > data.max_quarantine_fraction:
        critical.append(
            f"{quarantined} of {total} files quarantined ({fraction:.1%}), more than "
            f"data.max_quarantine_fraction={data.max_quarantine_fraction:.1%}"
        )
    return critical, results


def write_outputs(
    files: ValidationFiles, report: dict[str, Any], quarantine: pd.DataFrame, clean: pd.DataFrame
) -> None:
    """Write the report (JSON, and a self-contained HTML page), the quarantine list and the
    clean manifest."""
    write_json(files.report, report)
    files.html.write_text(report_html(report, quarantine), encoding="utf-8")
    quarantine.to_csv(files.quarantine, index=False)
    clean.to_parquet(files.clean_manifest, index=False)


_SHOWN_QUARANTINE = 500


def report_html(report: dict[str, Any], quarantine: pd.DataFrame) -> str:
    """The validation result as a page a person reads without a network (Great Expectations'
    Data Docs load their styling and index table from public CDNs)."""
    rows = quarantine.head(_SHOWN_QUARANTINE).to_dict("records")
    return render_html("validation.html.j2", report=report, quarantine=rows,
                       hidden=max(0, len(quarantine) - len(rows)))  # fmt: skip


def _imbalance_ratio(counts: pd.Series) -> float | None:
    minority = counts[counts > 0].min() if (counts > 0).any() else 0
    return float(counts.max() / minority) if minority else None


def _expectation_summary(
    row_results: list[dict[str, Any]], dataset_results: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    meanings = [r["type"] + " " + r["column"] for r in row_results] + ["minimum images per class"]
    return [
        {"expectation": r["type"], "column": r["column"], "success": r["success"],
         "unexpected_count": r["unexpected_count"], "meaning": meaning}
        for meaning, r in zip(meanings, row_results + dataset_results, strict=True)
    ]  # fmt: skip


@dataclass(frozen=True)
class _Decoded:
    thumbnail: bytes = b""
    error: str = ""
    width: int = 0
    height: int = 0


def _decode_and_hash(
    manifest: pd.DataFrame, manifest_dir: Path, recipe: Recipe, workers: int
) -> list[_Decoded]:
    """Decode every row's image (its frame); its near-duplicate signature and decoded size, or
    why it does not decode.

    Files with an ingest issue (outside the root, special, bomb header) are never opened, and
    neither are files whose header declares more than :data:`MAX_PIXELS`.
    """
    declared = (manifest["width"].astype("int64") * manifest["height"].astype("int64")).tolist()
    # The decoder preprocess uses: a large JPEG decoded at its reduced scale (the verdict is the
    # preprocess step's own), anything else in full.
    loader = LoadImage.from_config(recipe.image)
    paths = absolute_paths(manifest, manifest_dir)
    kept = _decode_table(loader)

    def check(item: tuple[str, str, int, int, str, str]) -> _Decoded:
        path, rel, frame, pixels, issue, sha256 = item
        if issue:
            return _Decoded(error="not decoded (see the other reason)")
        if pixels > MAX_PIXELS:
            return _Decoded(error=f"header declares {pixels:,} pixels, more than {MAX_PIXELS:,}")
        row = kept.get(sha256, frame)
        if row is not None:
            decoded = _Decoded(row["thumbnail"], "", int(row["width"]), int(row["height"]))
        else:
            try:
                image = loader.decode(path, name=rel, frame=frame)
            except ValueError as err:
                return _Decoded(error=str(err) or "file does not decode as an image")
            decoded = _Decoded(thumbnail(image), "", image.shape[1], image.shape[0])
        kept.keep({"sha256": sha256, "frame": frame, "thumbnail": decoded.thumbnail,
                   "width": decoded.width, "height": decoded.height})  # fmt: skip
        return decoded

    checks = zip(paths, manifest["path"], frames_of(manifest), declared, manifest["issue"],
                 manifest["sha256"], strict=True)  # fmt: skip
    decoded = parallel_map(check, checks, total=len(manifest), desc="validate", unit="img",
                           workers=workers)  # fmt: skip
    kept.save()
    return decoded


def _decode_table(loader: LoadImage) -> ReuseTable:
    """Verdicts on images that decoded, kept from earlier validations with the same decoder
    (by content: any dataset, any folder; see :mod:`medml.data.reuse`)."""
    from medml import near_duplicates, preprocess
    from medml.data import images

    identity = {
        "decoder": vars(loader),
        "max_pixels": MAX_PIXELS,
        **code_identity(images, preprocess, near_duplicates,
                        libraries=["opencv-python-headless", "pydicom", "pillow", "numpy"]),
    }  # fmt: skip
    return ReuseTable("decode", identity, key=["sha256", "frame"], carry_over=_DECODES_KEPT)


_DECODES_KEPT = 100_000  # verdicts kept for images the last run did not see (~30 MB)


def ignored_summary(ignored: dict[str, int]) -> str:
    """``"ignored: 3 .gif, 1 .webp"`` (empty when nothing was ignored)."""
    if not ignored:
        return ""
    return "ignored: " + ", ".join(f"{count} {suffix}" for suffix, count in ignored.items())


def _gx_in_set(column: str, values: list[Any]) -> Any:
    import great_expectations as gx

    return gx.expectations.ExpectColumnValuesToBeInSet(column=column, value_set=values)


def _gx_between(column: str, *, min_value: float, max_value: float | None = None) -> Any:
    import great_expectations as gx

    return gx.expectations.ExpectColumnValuesToBeBetween(
        column=column, min_value=min_value, max_value=max_value
    )


def _gx_context(docs_dir: Path | None) -> Any:
    """An ephemeral GX context; with ``docs_dir``, a Data Docs site rendered into that folder."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    set_library_defaults(("GX_ANALYTICS_ENABLED",))
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    if docs_dir is not None:
        context.add_data_docs_site(site_name="medml", site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })  # fmt: skip
    return context


def _run_suite(
    frame: pd.DataFrame, expectations: list[Any], name: str, context: Any = None
) -> list[dict[str, Any]]:
    """Run expectations on a dataframe; one dict per expectation.

    When ``context`` has a Data Docs site (see :func:`_gx_context`), the run goes through a
    Checkpoint whose UpdateDataDocsAction renders it there.
    """
    import great_expectations as gx

    context = context or _gx_context(None)
    batch = (
        context.data_sources.add_pandas(f"{name}_source")
        .add_dataframe_asset(name=name)
        .add_batch_definition_whole_dataframe(f"{name}_batch")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=f"{name}_suite"))
    for expectation in expectations:
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{name}_validation", data=batch, suite=suite)
    )
    result_format = {"result_format": "COMPLETE"}
    parameters = {"dataframe": frame.reset_index(drop=True)}
    if not context.get_site_names():
        outcome = definition.run(batch_parameters=parameters, result_format=result_format)
    else:
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name=f"{name}_checkpoint", validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
            result_format=result_format,
        ))  # fmt: skip
        outcome = next(iter(checkpoint.run(batch_parameters=parameters).run_results.values()))
    by_key = {
        (r.expectation_config.type, r.expectation_config.kwargs.get("column")): r
        for r in outcome.results
    }
    results = []
    for expectation in expectations:
        result = by_key[(expectation.expectation_type, expectation.column)]
        details = result.result or {}
        results.append(
            {
                "type": result.expectation_config.type,
                "column": expectation.column,
                "success": bool(result.success),
                "unexpected_count": int(details.get("unexpected_count") or 0),
                "unexpected_index_list": list(details.get("unexpected_index_list") or []),
            }
        )
    return results
