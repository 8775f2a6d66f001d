"""The plan of a build: profile, element closures, lint, mirrors, the resolved profile, keys.

Nothing is built here: ``make_plan`` reads and checks the inputs of a role and computes its
base key (what the base layer is made of) and its build key (everything the role is made of).
"""

from __future__ import annotations

from collections.abc import Sequence

from builder import cache, paths, pysrc
from builder.context import Options, Plan, Resolved
from builder.elements import Element, ElementLibrary, lint_element, lint_image, lint_layers
from builder.errors import ElementError
from builder.kernel import load_kernel_spec, load_xen_spec
from builder.mirrors import resolve_mirrors
from builder.profile import Profile, load_profile
from homecloud.core.manifest import BootInfo


def resolve(p: Profile, closure: Sequence[Element] = ()) -> Resolved:
    """The profile with its kernel and Xen specs loaded and its boot parameters derived."""
    ks = load_kernel_spec(p.kernel_spec())
    xen_spec = p.xen_spec()
    xs = load_xen_spec(xen_spec) if xen_spec else None
    boot = BootInfo(
        kind=p.boot_kind,
        loader=p.loader,
        root=p.root,
        cmdline=p.boot_cmdline or (xs.dom0_cmdline if xs else ks.cmdline),
        xen_cmdline=(p.boot_xen_cmdline or xs.cmdline) if xs else "",
    )
    return Resolved(profile=p, kernel=ks, xen=xs, boot=boot,
                    closure=tuple(e.name for e in closure))


def resolved_profile(p: Profile, closure: Sequence[Element] = ()) -> dict[str, object]:
    """The profile with its defaults and derived values filled in (``hcbuild show``)."""
    return resolve(p, closure).to_dict()


def make_plan(role: str, o: Options) -> Plan:
    edir = o.elements_dir or (
        o.profiles_dir.parent / "elements" if o.profiles_dir else paths.elements_dir()
    )
    library = ElementLibrary(root=edir)
    p = load_profile(role, o.profiles_dir, library)
    base_closure = tuple(library.closure((*p.base_elements, cache.LAYER_ELEMENT)))
    closure = tuple(library.closure((*p.base_elements, *p.elements, *cache.BUILD_ELEMENTS)))
    issues = [i for el in closure for i in lint_element(el)] + lint_image(closure)
    issues += lint_layers(base_closure, closure)
    if issues:
        raise ElementError(issues[0].element, "; ".join(str(i) for i in issues), issues[0].path)
    mirrors = resolve_mirrors(o.mirror, o.security_mirror)
    base_vars = {k for el in base_closure for k in el.env_keys}
    base_names = {el.name for el in base_closure}
    base_key = cache.digest(
        cache.base_inputs(
            base_elements=base_closure,
            release=p.release,
            arch=p.arch,
            kernel_spec=p.kernel_spec(),
            mirrors=mirrors,
            env={k: v for k, v in p.env.items() if k in base_vars},
            also=[el.name for el in closure
                  if el.external and el.name not in base_names
                  and (el.path / "environment.d").is_dir()],
        )
    )
    resolved = resolve(p, closure)
    key = cache.digest(
        cache.role_inputs(
            profile=resolved.to_dict(),
            elements=closure,
            kernel_spec=p.kernel_spec(),
            xen_spec=p.xen_spec(),
            mirrors=mirrors,
            arch=p.arch,
            base_key=base_key,
            python=pysrc.digests() if any(el.name == pysrc.ELEMENT for el in closure) else None,
        )
    )
    return Plan(role=role, resolved=resolved, library=library, base_closure=base_closure,
                closure=closure, mirrors=mirrors, base_key=base_key, key=key)
