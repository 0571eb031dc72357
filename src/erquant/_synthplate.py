"""Synthetic plates: layout, plan, lazy rendering, files and the ``synth`` CLI.

Public names are re-exported by :mod:`erquant.synthetic` (import them from
there); the image and dose/time models are documented in that module.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from erquant.synthetic import (
    CHANNEL_NAMES,
    CHANNELS,
    CLUMPED_LOOK,
    CompoundSpec,
    PlateSpec,
    SyntheticField,
    illumination_profile,
    make_field,
)

__all__ = [
    "PlateFolderError",
    "SyntheticPlate",
    "add_cli",
    "main_synth",
    "make_plate",
    "write_plate",
]


# ---------------------------------------------------------------------------- plates
def _layout(spec: PlateSpec) -> list[dict]:
    """Wells of one plate: dose series in rows (cols 1..n_doses), controls in the last 2 columns."""
    from erquant.io.plate import well_name

    nrows, ncols = {96: (8, 12), 384: (16, 24), 1536: (32, 48)}[spec.plate_format]
    series = [(c, r) for c in spec.compounds for r in range(spec.replicates)]
    controls = [("DMSO", 0.0, "vehicle")] * spec.n_vehicle
    if spec.reference is not None:
        controls += [(spec.reference.name, spec.reference_conc_nM, "reference")] * spec.n_reference
    treatments = [(c.name, float(d), c.role) for c, _ in series for d in spec.doses_nM]
    total = len(treatments) + len(controls)
    if total > nrows * ncols:
        raise ValueError(f"{total} wells do not fit a {spec.plate_format}-well plate")
    wells: list[tuple[int, int]] = []
    if len(spec.doses_nM) <= ncols - 2 and len(series) <= nrows and len(controls) <= 2 * nrows:
        wells = [(i + 1, j + 1) for i in range(len(series)) for j in range(len(spec.doses_nM))]
        wells += [(i % nrows + 1, ncols - 1 + i // nrows) for i in range(len(controls))]
    else:  # row-major fill
        wells = [(i // ncols + 1, i % ncols + 1) for i in range(total)]
    return [
        {
            "well": well_name(r, c),
            "row": r,
            "col": c,
            "compound": name,
            "concentration_nM": conc,
            "role": role,
        }
        for (r, c), (name, conc, role) in zip(wells, treatments + controls)
    ]


def _compound_table(spec: PlateSpec) -> dict[str, CompoundSpec]:
    table = {c.name: c for c in spec.compounds}
    if spec.reference is not None:
        table.setdefault(spec.reference.name, spec.reference)
    return table


@dataclass
class SyntheticPlate:
    """A planned plate; fields are rendered lazily by :meth:`fields`.

    Attributes
    ----------
    spec : PlateSpec
    plate_map : DataFrame
        One row per (well, time point): ``plate, well, row, col, compound,
        concentration_nM, time_h, cell_line, role``.
    plan : DataFrame
        One row per field: ``plate, well, row, col, field, timepoint, time_h,
        n_nuclei, in_focus, er_scale`` (what will be rendered).
    truth_wells : DataFrame
        Per well and time: ``true_count`` (exact number of nuclei),
        ``expected_count``, ``count_fraction``, ``er_fraction``, ``er_level``
        (model mean nuclear ERα), ``n_out_of_focus``.
    truth_compounds : DataFrame
        Per compound and time: ``dc50_nM, dmax (at that time), dmax_inf, hill,
        ic50_nM, imax (at that time), imax_inf, hill_prolif``.
    """

    spec: PlateSpec
    plate_map: pd.DataFrame
    plan: pd.DataFrame
    truth_wells: pd.DataFrame
    truth_compounds: pd.DataFrame

    def __len__(self) -> int:
        return len(self.plan)

    def field(self, well: str, field: int = 1, time_h: float | None = None) -> SyntheticField:
        """Render one field (``time_h`` defaults to the first time point)."""
        t = self.spec.time_points_h[0] if time_h is None else float(time_h)
        sel = self.plan[
            (self.plan.well == well) & (self.plan.field == field) & (self.plan.time_h == t)
        ]
        if sel.empty:
            raise KeyError(f"no field {well} s{field} at {t} h on plate {self.spec.name}")
        return self._render(sel.iloc[0])

    def _render(self, p) -> SyntheticField:
        s = self.spec
        return make_field(
            shape=s.shape,
            n_nuclei=int(p.n_nuclei),
            er_scale=float(p.er_scale),
            seed=[s.seed, 2, int(p.timepoint), int(p.row), int(p.col), int(p.field)],
            er_level=s.er_level,
            er_cv=s.er_cv,
            nucleus_diameter=s.nucleus_diameter,
            in_focus=bool(p.in_focus),
            vignetting=s.vignetting,
            offset=s.offset,
            cyto_fraction=s.cyto_fraction,
            # MCF-7-like clumps: make_clumped_field's look
            **(dict(CLUMPED_LOOK, clump_size=int(s.clump_size)) if s.clump_size else {}),
        )

    def fields(
        self, wells: Sequence[str] | None = None
    ) -> Iterator[tuple[str, int, float, SyntheticField]]:
        """Yield ``(well, field, time_h, SyntheticField)`` for every planned field, lazily."""
        for p in self.plan.itertuples(index=False):
            if wells is None or p.well in wells:
                yield p.well, int(p.field), float(p.time_h), self._render(p)

    def cell_truth(self, wells: Sequence[str] | None = None) -> pd.DataFrame:
        """Render every field and return the per-cell truth keyed by plate, well, field, time_h."""
        parts = [_keyed_truth(self.spec.name, w, f, t, fld) for w, f, t, fld in self.fields(wells)]
        return pd.concat(parts, ignore_index=True)


def _keyed_truth(plate, well, field_, time_h, fld: SyntheticField) -> pd.DataFrame:
    t = fld.truth.copy()
    t.insert(0, "plate", plate)
    t.insert(1, "well", well)
    t.insert(2, "field", field_)
    t.insert(3, "time_h", time_h)
    t["in_focus"] = fld.in_focus
    return t


def make_plate(spec: PlateSpec | None = None) -> SyntheticPlate:
    """Plan a synthetic plate: plate map, per-field plan and truth tables (no pixels yet).

    Examples
    --------
    >>> from erquant.synthetic import PlateSpec
    >>> plate = make_plate(PlateSpec(shape=(96, 96), fields_per_well=1))
    >>> sorted(plate.plate_map.role.unique())
    ['reference', 'sample', 'vehicle']
    >>> well, field, time_h, fld = next(plate.fields())
    >>> fld.image.shape
    (2, 96, 96)
    """
    spec = PlateSpec() if spec is None else spec
    cmp = _compound_table(spec)
    layout = _layout(spec)
    map_rows, plan_rows, well_rows = [], [], []
    for ti, t in enumerate(spec.time_points_h, start=1):
        n_veh = spec.vehicle_nuclei(t)
        for w in layout:
            c = cmp.get(w["compound"])
            conc = w["concentration_nM"]
            cf = 1.0 if c is None else float(c.count_fraction(conc, t, spec.tau_prolif_h))
            ef = 1.0 if c is None else float(c.er_fraction(conc, t, spec.tau_deg_h))
            map_rows.append(
                {"plate": spec.name, **w, "time_h": float(t), "cell_line": spec.cell_line}
            )
            counts, oof = [], 0
            for f in range(1, spec.fields_per_well + 1):
                rng = np.random.default_rng([spec.seed, 1, ti, w["row"], w["col"], f])
                n = int(rng.poisson(n_veh * cf))
                in_focus = bool(rng.random() >= spec.out_of_focus_fraction)
                counts.append(n)
                oof += not in_focus
                plan_rows.append(
                    {
                        "plate": spec.name,
                        "well": w["well"],
                        "row": w["row"],
                        "col": w["col"],
                        "field": f,
                        "timepoint": ti,
                        "time_h": float(t),
                        "n_nuclei": n,
                        "in_focus": in_focus,
                        "er_scale": ef,
                    }
                )
            well_rows.append(
                {
                    "plate": spec.name,
                    "well": w["well"],
                    "time_h": float(t),
                    "compound": w["compound"],
                    "concentration_nM": conc,
                    "role": w["role"],
                    "n_fields": spec.fields_per_well,
                    "true_count": int(sum(counts)),
                    "expected_count": n_veh * cf * spec.fields_per_well,
                    "count_fraction": cf,
                    "er_fraction": ef,
                    "er_level": spec.er_level * ef,
                    "n_out_of_focus": oof,
                }
            )
    comp_rows = [
        {
            "compound": c.name,
            "role": c.role,
            "time_h": float(t),
            "dc50_nM": c.dc50_nM,
            "dmax": c.dmax_at(t, spec.tau_deg_h),
            "dmax_inf": c.dmax,
            "hill": c.hill,
            "ic50_nM": c.ic50_nM,
            "imax": c.imax_at(t, spec.tau_prolif_h),
            "imax_inf": c.imax,
            "hill_prolif": c.hill_prolif,
            "er_level_vehicle": spec.er_level,
            "vehicle_count_per_field": spec.vehicle_nuclei(t),
        }
        for c in cmp.values()
        for t in spec.time_points_h
    ]
    return SyntheticPlate(
        spec,
        pd.DataFrame(map_rows),
        pd.DataFrame(plan_rows),
        pd.DataFrame(well_rows),
        pd.DataFrame(comp_rows),
    )


def _spec_json(spec: PlateSpec) -> str:
    return json.dumps(asdict(spec), indent=2, sort_keys=True, default=str)


class PlateFolderError(ValueError):
    """:func:`write_plate` refuses its output folder (user data is never overwritten)."""


def _is_generated_plate(folder: Path) -> bool:
    """True when ``folder`` holds the ``spec.json`` and ``plate_map.csv`` of :func:`write_plate`."""
    if not (folder / "plate_map.csv").is_file() or not (folder / "spec.json").is_file():
        return False
    try:
        spec = json.loads((folder / "spec.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(spec, dict) and {"name", "shape", "seed", "fields_per_well"} <= set(spec)


def _check_plate_folder(outdir: Path) -> None:
    """Refuse to write a plate over anything but an empty folder or a plate written before.

    Raises
    ------
    PlateFolderError
        (a ValueError) When ``outdir`` is a file, or a non-empty folder that is not a plate
        written by :func:`write_plate`; the message names the folder and what
        is in it.
    """
    if not outdir.exists():
        return
    if not outdir.is_dir():
        raise PlateFolderError(f"{outdir}: exists and is a file, not a folder")
    entries = sorted(p.name for p in outdir.iterdir())
    if not entries or _is_generated_plate(outdir):
        return
    shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
    raise PlateFolderError(
        f"{outdir}: folder is not empty and is not a plate written by erquant synth "
        f"(it holds {shown}); refusing to write a synthetic plate into it: "
        "choose a new or empty folder"
    )


def write_plate(
    spec: PlateSpec | None,
    outdir: str | Path,
    *,
    formats: Sequence[str] = ("metaxpress", "ome-tiff"),
    progress: bool = True,
    wells: Sequence[str] | None = None,
    compression: str | None = "zlib",
) -> Path:
    """Render a plate and write images, plate map and ground truth to ``outdir``.

    Layout (``<t>`` = 1-based time-point index, hours in ``timepoints.csv``)::

        outdir/TimePoint_<t>/A01_s1_w1.tif      Hoechst (w1), ERα (w2); uint16   ["metaxpress"]
        outdir/plate.ome.tif                    one OME series (C, Y, X) per field  ["ome-tiff"]
        outdir/plate_index.csv                  series → plate, well, row, col, field, timepoint, time_h
        outdir/plate_map.csv  timepoints.csv  spec.json
        outdir/truth/TimePoint_<t>/A01_s1_nuclei.tif, A01_s1_cells.tif   uint32 labels
        outdir/truth/cells.parquet              per-cell truth (plate, well, field, time_h, label, ...)
        outdir/truth/fields.csv  wells.csv  compounds.csv  illumination.tif

    Parameters
    ----------
    spec : PlateSpec or None
        None = the default demo plate.
    outdir : str or Path
    formats : sequence of {"metaxpress", "ome-tiff"}
    progress : bool
        Show a tqdm progress bar.
    wells : sequence of str, optional
        Only render these wells (``plate_map.csv`` lists them only; the compound truth
        stays complete).
    compression : str or None
        TIFF compression (``"zlib"`` default, lossless).

    Returns
    -------
    Path
        ``outdir``.

    Raises
    ------
    PlateFolderError
        (a ValueError) When ``outdir`` is a file, or a folder that is neither empty nor a plate
        written by this function (its ``spec.json`` and ``plate_map.csv``):
        user data is never overwritten. Checked before anything is written.

    Examples
    --------
    >>> import tempfile
    >>> from erquant.synthetic import PlateSpec
    >>> out = write_plate(PlateSpec(shape=(64, 64), fields_per_well=1, n_nuclei=5),
    ...                   tempfile.mkdtemp(), wells=["A01"], progress=False)
    >>> sorted(p.name for p in (out / "TimePoint_1").iterdir())
    ['A01_s1_w1.tif', 'A01_s1_w2.tif']
    """
    from erquant.io.plate import metaxpress_name, write_ome_stack
    from erquant.io.tiff import write_tiff

    spec = PlateSpec() if spec is None else spec
    unknown = set(formats) - {"metaxpress", "ome-tiff"}
    if unknown:
        raise ValueError(f"unknown format(s) {sorted(unknown)}; use 'metaxpress' and/or 'ome-tiff'")
    outdir = Path(outdir)
    _check_plate_folder(outdir)
    plate = make_plate(spec)
    plan = plate.plan if wells is None else plate.plan[plate.plan.well.isin(list(wells))]
    if plan.empty:
        raise ValueError(f"none of the wells {list(wells or [])} is on plate {spec.name}")
    (outdir / "truth").mkdir(parents=True, exist_ok=True)
    pmap = plate.plate_map
    if wells is not None:  # the map of the plate on disk: the wells that were rendered
        pmap = pmap[pmap.well.isin(list(wells))]
    pmap.to_csv(outdir / "plate_map.csv", index=False)
    pd.DataFrame(
        {"timepoint": range(1, len(spec.time_points_h) + 1), "time_h": spec.time_points_h}
    ).to_csv(outdir / "timepoints.csv", index=False)
    (outdir / "spec.json").write_text(_spec_json(spec))
    plate.truth_compounds.to_csv(outdir / "truth" / "compounds.csv", index=False)

    cell_parts, field_rows = [], []

    def rendered():
        it = plan.itertuples(index=False)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, total=len(plan), desc=f"synth {spec.name}", unit="field")
        for p in it:
            fld = plate._render(p)
            tp = f"TimePoint_{int(p.timepoint)}"
            if "metaxpress" in formats:
                for c, ch in enumerate(CHANNELS):
                    write_tiff(
                        outdir / tp / metaxpress_name(p.well, int(p.field), ch),
                        fld.image[c],
                        compression=compression,
                    )
            stem = f"{p.well}_s{int(p.field)}"
            write_tiff(outdir / "truth" / tp / f"{stem}_nuclei.tif", fld.nuclei, compression="zlib")
            write_tiff(outdir / "truth" / tp / f"{stem}_cells.tif", fld.cells, compression="zlib")
            cell_parts.append(_keyed_truth(spec.name, p.well, int(p.field), float(p.time_h), fld))
            field_rows.append(
                {
                    "plate": spec.name,
                    "well": p.well,
                    "field": int(p.field),
                    "timepoint": int(p.timepoint),
                    "time_h": float(p.time_h),
                    "in_focus": fld.in_focus,
                    "true_count": fld.n_nuclei,
                    "mean_true_er": float(fld.truth.true_er.mean()) if fld.n_nuclei else np.nan,
                }
            )
            meta = {
                "plate": spec.name,
                "well": p.well,
                "row": int(p.row),
                "col": int(p.col),
                "field": int(p.field),
                "timepoint": int(p.timepoint),
                "time_h": float(p.time_h),
            }
            yield meta, fld.image

    if "ome-tiff" in formats:
        import uuid

        fixed = str(
            uuid.uuid5(
                uuid.NAMESPACE_URL, "erquant-synth:" + _spec_json(spec) + repr(sorted(wells or []))
            )
        )
        write_ome_stack(
            outdir / "plate.ome.tif",
            rendered(),
            channel_names=CHANNEL_NAMES,
            uuid=fixed,
            compression=compression,
        )
    else:
        for _ in rendered():
            pass

    write_tiff(
        outdir / "truth" / "illumination.tif",
        illumination_profile(spec.shape, spec.vignetting),
        compression="zlib",
    )
    cells = pd.concat(cell_parts, ignore_index=True)
    cells.to_parquet(outdir / "truth" / "cells.parquet", index=False)
    fields = pd.DataFrame(field_rows)
    fields.to_csv(outdir / "truth" / "fields.csv", index=False)
    per_well = cells.groupby(["well", "time_h"]).true_er.mean().rename("mean_true_er")
    tw = plate.truth_wells.merge(per_well.reset_index(), on=["well", "time_h"], how="left")
    if wells is not None:
        tw = tw[tw.well.isin(list(wells))]
    tw.to_csv(outdir / "truth" / "wells.csv", index=False)
    return outdir


# ---------------------------------------------------------------------------- CLI hook
def add_cli(subparsers) -> None:
    """Add the ``synth`` sub-command to an :mod:`argparse` sub-parsers object.

    Examples
    --------
    >>> import argparse
    >>> p = argparse.ArgumentParser(); add_cli(p.add_subparsers(dest="cmd"))
    >>> p.parse_args(["synth", "out", "--size", "256"]).size
    256
    """
    p = subparsers.add_parser(
        "synth",
        help="write a synthetic plate (images + plate map + ground truth)",
        description="Write a synthetic 2-channel plate (w1 Hoechst, w2 ERα) with ground truth.",
    )
    p.add_argument("outdir", help="output folder")
    p.add_argument("--size", type=int, default=512, help="field size in px (square)")
    p.add_argument("--fields", type=int, default=2, help="fields per well")
    p.add_argument(
        "--nuclei",
        type=int,
        default=None,
        help="vehicle nuclei per field at 24 h (default: 300 per 1024²)",
    )
    p.add_argument("--diameter", type=float, default=24.0, help="mean nucleus diameter (px)")
    p.add_argument("--doses", type=int, default=8, help="doses per compound (0.1–1000 nM)")
    p.add_argument("--replicates", type=int, default=1)
    p.add_argument("--time", type=float, nargs="+", default=[24.0], help="time points (h)")
    p.add_argument("--wells", nargs="+", default=None, help="only these wells, e.g. A01 A02")
    p.add_argument(
        "--format",
        nargs="+",
        default=["metaxpress", "ome-tiff"],
        choices=["metaxpress", "ome-tiff"],
    )
    p.add_argument("--clumps", type=int, default=0, metavar="N",
                   help="MCF-7-like confluent clumps of N touching nuclei of mixed "
                        "brightness (default 0: scattered nuclei)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="SYN01", help="plate name")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_cli)


def _run_cli(args) -> int:
    from erquant._cli_errors import UsageError, check_output_dir

    outdir = Path(args.outdir)
    # usage errors (exit 2) before anything is written
    try:
        _check_plate_folder(outdir)
        doses = tuple(float(f"{d:.3g}") for d in np.geomspace(0.1, 1000.0, args.doses))
        spec = PlateSpec(
            name=args.name,
            shape=(args.size, args.size),
            fields_per_well=args.fields,
            n_nuclei=args.nuclei,
            nucleus_diameter=args.diameter,
            doses_nM=doses,
            replicates=args.replicates,
            time_points_h=tuple(args.time),
            seed=args.seed,
            clump_size=args.clumps,
        )
        if args.clumps < 0:
            raise ValueError(f"--clumps {args.clumps}: must be >= 0")
        plan = make_plate(spec).plan
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if args.wells is not None and not plan.well.isin(list(args.wells)).any():
        raise UsageError(f"--wells: none of {' '.join(args.wells)} is on plate {spec.name} "
                         f"(wells {plan.well.iloc[0]} … {plan.well.iloc[-1]})")
    check_output_dir(outdir, option="OUTDIR")
    out = write_plate(
        spec,
        args.outdir,
        formats=tuple(args.format),
        progress=not args.no_progress,
        wells=args.wells,
    )
    print(f"wrote synthetic plate {spec.name} to {out}")
    return 0


def main_synth(argv: Sequence[str] | None = None) -> int:
    """Run ``erquant synth`` with ``argv`` (without the sub-command name).

    Examples
    --------
    >>> import tempfile
    >>> main_synth([tempfile.mkdtemp(), "--size", "64", "--fields", "1", "--wells", "A01",
    ...             "--no-progress", "--format", "metaxpress"])  # doctest: +ELLIPSIS
    wrote synthetic plate SYN01 to ...
    0
    """
    import argparse

    from erquant._cli_errors import run_command

    parser = argparse.ArgumentParser(prog="erquant")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["synth", *(argv or [])])
    return run_command(args.func, args)
