"""``hcboot aoe scan|verify``: the click group ``aoe`` (attached to ``hcboot`` by homecloud.cli).

Exit codes: 0 ok; 1 the export does not match (content or size); 2 usage; 3 could not check
(interface, target not found, timeout, AoE/ATA error, manifest or artifact missing).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from homecloud.aoe.frames import SECTOR, AoEError, Target
from homecloud.aoe.io import AoESocket
from homecloud.aoe.reader import ReaderConfig
from homecloud.aoe.scan import ScanTarget, scan
from homecloud.aoe.verify import (
    ArtifactUnavailable,
    ExpectedImage,
    VerifyError,
    VerifyResult,
    expected_from_manifest_file,
    expected_from_role,
    verify,
)

EXIT_MISMATCH = 1
EXIT_ERROR = 3


def _fail(message: str, code: int) -> None:
    click.echo(f"hcboot aoe: {message}", err=True)
    sys.exit(code)


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


@click.group()
def aoe() -> None:
    """ATA over Ethernet: find exports and check what they serve."""


@aoe.command("scan", short_help="List the AoE targets answering on a link.")
@click.option("--interface", "-i", required=True, help="Interface to broadcast on.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.option("--timeout", type=float, default=1.0, show_default=True,
              help="Seconds to collect Query Config replies.")
@click.option("--netns", default=None, help="Open the interface inside this network namespace.")
def scan_cmd(interface: str, as_json: bool, timeout: float, netns: str | None) -> None:
    """List every AoE target answering on INTERFACE: shelf.slot, paths (MACs), size,
    firmware, config string, buffer count."""
    try:
        with AoESocket(interface, netns=netns) as sock:
            found = scan(sock, timeout=timeout)
    except AoEError as exc:
        _fail(str(exc), EXIT_ERROR)
        return
    if as_json:
        click.echo(json.dumps([t.to_dict() for t in found], indent=2))
        return
    if not found:
        click.echo(f"no AoE target answered on {interface} within {timeout:g}s")
        return
    for t in found:
        click.echo(_scan_line(t))


def _scan_line(t: ScanTarget) -> str:
    size = (f"{t.sectors} sectors ({_size(t.size_bytes)})" if t.identify
            else f"size unknown ({t.identify_error})")
    cfg = f" config={t.config!r}" if t.config else ""
    return (f"{t.target}  {size}  firmware 0x{t.firmware:04x}  buffers {t.buffer_count}"
            f"{cfg}  paths {','.join(t.macs)}")


class _ProgressPrinter:
    """Bytes and MB/s on stderr, at most twice a second (only when stderr is a terminal or
    ``force``)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.t0 = time.monotonic()
        self.last = 0.0
        self.printed = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < 0.5 and done < total:
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-6) / 1e6
        pct = 100.0 * done / total if total else 100.0
        click.echo(f"\r  {_size(done)} / {_size(total)} ({pct:5.1f}%)  {rate:7.1f} MB/s ",
                   err=True, nl=False)
        self.printed = True

    def finish(self) -> None:
        if self.printed:
            click.echo("", err=True)


@aoe.command("verify", short_help="Check an export against the image store (read-only).")
@click.option("--interface", "-i", required=True, help="Interface the target is reached on.")
@click.option("--target", "target_text", required=True, help="AoE target eSHELF.SLOT.")
@click.option("--role", default=None, help="Role whose current build the export must serve.")
@click.option("--images", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Image store (default: $HC_IMAGE_STORE or /var/lib/homecloud/images).")
@click.option("--manifest", "manifest_path", default=None,
              type=click.Path(path_type=Path, dir_okay=False), help="A manifest.json instead "
              "of --role (its artifact file, if next to it, is used for LBA reports).")
@click.option("--artifact", default="rootfs", show_default=True, help="Artifact name.")
@click.option("--full", is_flag=True, help="Read everything and compare sha256 (default).")
@click.option("--sample", type=click.IntRange(min=1), default=None, metavar="N",
              help="Compare N sectors (first, last, random) with the local artifact file.")
@click.option("--seed", type=int, default=None, help="Random seed for --sample.")
@click.option("--window", type=click.IntRange(1, 256), default=16, show_default=True,
              help="Requests in flight.")
@click.option("--timeout", type=float, default=0.25, show_default=True,
              help="Seconds before a request is sent again.")
@click.option("--retries", type=click.IntRange(0, 100), default=6, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--progress/--no-progress", default=None,
              help="Progress on stderr (default: when stderr is a terminal).")
@click.option("--netns", default=None, help="Open the interface inside this network namespace.")
def verify_cmd(interface: str, target_text: str, role: str | None, images: Path | None,
               manifest_path: Path | None, artifact: str, full: bool, sample: int | None,
               seed: int | None, window: int, timeout: float, retries: int, as_json: bool,
               progress: bool | None, netns: str | None) -> None:
    """Read export TARGET over AoE and check it is the artifact of a manifest: the whole export
    against the manifest's sha256 (--full), or N sectors against the local file (--sample N).
    Never writes."""
    try:
        target = Target.parse(target_text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--target") from exc
    if (role is None) == (manifest_path is None):
        raise click.UsageError("give exactly one of --role or --manifest")
    if manifest_path is not None and images is not None:
        raise click.UsageError("--images goes with --role, not --manifest")
    if full and sample is not None:
        raise click.UsageError("give one of --full or --sample N")
    mode = "sample" if sample is not None else "full"
    try:
        expected = _expected(role, images, manifest_path, artifact)
        show = sys.stderr.isatty() if progress is None else progress
        printer = _ProgressPrinter(show)
        cfg = ReaderConfig(window=window, timeout=timeout, retries=retries)
        with AoESocket(interface, netns=netns) as sock:
            try:
                result = verify(sock, target, expected, mode=mode, samples=sample or 0,
                                seed=seed, config=cfg, progress=printer)
            finally:
                printer.finish()
    except VerifyError as exc:
        res = getattr(exc, "result", None)
        if as_json and isinstance(res, VerifyResult):
            click.echo(json.dumps(res.to_dict(), indent=2))
        code = EXIT_ERROR if isinstance(exc, ArtifactUnavailable) else EXIT_MISMATCH
        _fail(str(exc), code)
        return
    except AoEError as exc:
        _fail(str(exc), EXIT_ERROR)
        return
    for mac in result.dropped:
        later = " (it answered again later)" if mac in result.revived else ""
        click.echo(f"hcboot aoe: warning: path {mac} stopped answering and was dropped{later}",
                   err=True)
    if result.local_differs_lba is not None:
        click.echo(f"hcboot aoe: warning: the export matches the manifest but the local file"
                   f" {expected.local} differs at LBA {result.local_differs_lba}", err=True)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    click.echo(_verify_line(result, expected))


def _expected(role: str | None, images: Path | None, manifest_path: Path | None,
              artifact: str) -> ExpectedImage:
    if role is not None:
        from homecloud.core.paths import default_image_store

        return expected_from_role(images or default_image_store(), role, artifact)
    assert manifest_path is not None
    return expected_from_manifest_file(manifest_path, artifact)


def _verify_line(r: VerifyResult, e: ExpectedImage) -> str:
    via = f"via {len(r.paths)} path(s) {','.join(r.paths)}"
    if r.mode == "full":
        what = f"{_size(r.bytes_read)} match sha256 {e.sha256[:16]}..."
    else:
        what = (f"{r.samples} sampled sectors ({r.samples * SECTOR} B) match {e.local}")
    return (f"{r.target} OK: {what} of {e.name} ({e.source}) {via}"
            f" in {r.seconds:.2f}s ({r.mb_per_s:.1f} MB/s)")
