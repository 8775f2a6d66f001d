"""hcbuild: build role images into the image store.

    hcbuild image ROLE [--out STORE] [--force] [--keep N]
    hcbuild image --all
    hcbuild list
    hcbuild show ROLE [--format yaml|json]
    hcbuild lint

The only module that turns errors into messages and exit codes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import yaml

from builder import paths
from builder.cache import BUILD_ELEMENTS, LAYER_ELEMENT
from builder.elements import ElementLibrary, lint_element, lint_image, lint_layers
from builder.errors import BuildError, CommandError, DibError
from builder.progress import Progress
from homecloud.core.paths import default_cache_dir, default_image_store

EXIT_USAGE = 2
EXIT_INPUT = 6  # kernel/initramfs input errors raised by builder.kernel / builder.initramfs


def _lib(profiles_dir: Path | None) -> ElementLibrary:
    root = profiles_dir.parent / "elements" if profiles_dir else paths.elements_dir()
    return ElementLibrary(root=root)


def _report(exc: BaseException) -> int:
    """Print ``exc`` for a human; return the exit code."""
    if isinstance(exc, DibError):
        click.echo(f"hcbuild: error: {exc}", err=True)
        if exc.log_path:
            click.echo(f"hcbuild: full log: {exc.log_path}", err=True)
        if exc.tail:
            click.echo(f"hcbuild: last {len(exc.tail)} log lines:", err=True)
            for line in exc.tail:
                click.echo(f"  | {line}", err=True)
        return exc.exit_code
    if isinstance(exc, CommandError):
        click.echo(f"hcbuild: error: {exc}", err=True)
        for line in exc.tail:
            click.echo(f"  | {line}", err=True)
        return exc.exit_code
    if isinstance(exc, BuildError):
        click.echo(f"hcbuild: error: {exc}", err=True)
        return exc.exit_code
    click.echo(f"hcbuild: error: {exc}", err=True)
    return EXIT_INPUT


def _input_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = [BuildError]
    try:
        from builder.kernel import KernelError

        errs.append(KernelError)
    except ImportError:  # pragma: no cover - the bootchain module is part of the package
        pass
    try:
        from builder.initramfs import InitramfsError

        errs.append(InitramfsError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errs)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except _input_errors() as exc:
            ctx.exit(_report(exc))


profiles_opt = click.option(
    "--profiles-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder of <role>.yaml (its sibling elements/ and kernels/ are used too). "
    "Default: $HC_DATA_DIR/profiles or the shipped profiles.",
)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Build homecloud role images (kernel, initrd, rootfs, xen) into the image store."""


@main.command()
@click.argument("roles", nargs=-1)
@click.option("--all", "all_roles", is_flag=True, help="Build every role that has a profile.")
@click.option("--out", "store", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Image store (default $HC_IMAGE_STORE or <state>/images).")
@click.option("--cache", "cache_dir", type=click.Path(path_type=Path, file_okay=False),
              default=None, help="Build cache (default $HC_CACHE_DIR or /var/cache/homecloud).")
@click.option("--force", is_flag=True, help="Build even when a build of the same inputs exists.")
@click.option("--keep", type=click.IntRange(min=1), default=3, show_default=True,
              help="Builds kept per role (current is never removed).")
@click.option("--mirror", default=None, help="Debian mirror (default: $HC_DEBIAN_MIRROR or the "
              "host's apt sources).")
@click.option("--security-mirror", default=None,
              help="Debian security mirror (default: $HC_DEBIAN_SECURITY_MIRROR or host's apt).")
@click.option("--wait-lock", type=float, default=0.0, help="Seconds to wait for a busy role.")
@click.option("-q", "--quiet", is_flag=True, help="Only print the build ids.")
@profiles_opt
def image(
    roles: tuple[str, ...],
    all_roles: bool,
    store: Path | None,
    cache_dir: Path | None,
    force: bool,
    keep: int,
    mirror: str | None,
    security_mirror: str | None,
    wait_lock: float,
    quiet: bool,
    profiles_dir: Path | None,
) -> None:
    """Build ROLE(s) into the store; prints '<role> <build-id> <path>' per role."""
    from builder.pipeline import Options, build_role
    from builder.profile import list_roles

    if all_roles and roles:
        raise click.UsageError("give ROLE names or --all, not both")
    if all_roles:
        roles = tuple(list_roles(profiles_dir))
        if not roles:
            raise click.UsageError("no profiles found")
    if not roles:
        raise click.UsageError("give a ROLE or --all")
    opts = Options(
        store=store or default_image_store(),
        cache_dir=cache_dir or default_cache_dir(),
        profiles_dir=profiles_dir,
        force=force,
        keep=keep,
        mirror=mirror,
        security_mirror=security_mirror,
        lock_wait=wait_lock,
    )
    prog = Progress(quiet=quiet)
    for role in roles:
        res = build_role(role, opts, prog)
        state = "unchanged" if res.reused else "built"
        click.echo(f"{res.role} {res.build_id} {res.path} {state} {res.seconds:.1f}s")
        if res.removed and not quiet:
            prog.info(f"{role}: removed old builds {', '.join(res.removed)}")


@main.command("list")
@profiles_opt
@click.option("--out", "store", type=click.Path(path_type=Path, file_okay=False), default=None)
def list_cmd(profiles_dir: Path | None, store: Path | None) -> None:
    """Roles with a profile, their elements and their current build."""
    from builder.profile import list_roles, load_profile
    from builder.store import RoleStore

    st = store or default_image_store()
    lib = _lib(profiles_dir)
    for role in list_roles(profiles_dir):
        p = load_profile(role, profiles_dir, lib)
        cur = RoleStore(st, role).current_id() or "-"
        click.echo(f"{role:8} {cur:32} {' '.join(p.elements):40} {p.description}")


@main.command()
@click.argument("role")
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml",
              show_default=True)
@profiles_opt
def show(role: str, fmt: str, profiles_dir: Path | None) -> None:
    """The fully resolved profile of ROLE (defaults, element closure, boot parameters)."""
    from builder.plan import resolved_profile
    from builder.profile import load_profile

    lib = _lib(profiles_dir)
    p = load_profile(role, profiles_dir, lib)
    doc = resolved_profile(p, lib.closure((*p.base_elements, *p.elements, *BUILD_ELEMENTS)))
    if fmt == "json":
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(yaml.safe_dump(doc, sort_keys=False, width=100).rstrip())


@main.command()
@profiles_opt
def lint(profiles_dir: Path | None) -> None:
    """Lint the anatomy of every element and of every profile's image."""
    from builder.profile import list_roles, load_profile

    lib = _lib(profiles_dir)
    issues = [i for n in lib.names() for i in lint_element(lib.get(n))]
    for role in list_roles(profiles_dir):
        p = load_profile(role, profiles_dir, lib)
        closure = lib.closure((*p.base_elements, *p.elements, *BUILD_ELEMENTS))
        issues += lint_image(closure)
        issues += lint_layers(lib.closure((*p.base_elements, LAYER_ELEMENT)), closure)
    for i in issues:
        click.echo(str(i))
    if issues:
        sys.exit(1)
    click.echo(f"{len(lib.names())} elements clean")


if __name__ == "__main__":  # pragma: no cover
    main()
