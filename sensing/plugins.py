"""Device kinds from plug-ins: the ``citywatch.devices`` entry-point group and ``plugins:`` in the
config.

A plug-in is an object (usually a class) with two attributes:

- ``kind``: the kind in its topics, ``city/{kind}/{device_id}/{channel}``;
- ``spec``: a :class:`~sensing.decode.KindSpec`, what the platform accepts from that kind.

To be simulated as well it has ``create(device, site, rng)`` returning a device simulator;
subclasses of ``simulators.devices.base.BaseDevice`` inherit one. A package registers a plug-in
with an entry point named after the kind::

    [project.entry-points."citywatch.devices"]
    wind = "wind_gauge:WindGauge"

or a deployment lists it in ``config.yaml`` (``plugins: ["wind_gauge:WindGauge"]``). Both load at
start; a plug-in that cannot be loaded, or that claims a kind already taken, stops the start with
a :class:`PluginError` naming it: running on would dead-letter every message of that kind.

Hazards are plug-ins too: a :class:`rules.hazard.Hazard` object, from the ``citywatch.hazards``
entry-point group (named after the hazard) or listed in the same ``plugins:``
(``"wind_hazard:WIND_AT_HEIGHT"``). :func:`register_hazards` puts them in ``rules.registry``
before the configuration is validated, since the routing table and the rules' parameters must
know them.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Any, Protocol

from rules import registry
from rules.hazard import Hazard
from sensing.decode import BUILTIN_KINDS, KindSpec, Text
from sensing.topics import is_kind

log = logging.getLogger(__name__)
OTHER_CATEGORY = "other"  # a grid report about no hazard: kept in the event store, no alert

ENTRY_POINT_GROUP = "citywatch.devices"
HAZARD_ENTRY_POINT_GROUP = "citywatch.hazards"
_PATH_RE = re.compile(r"[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*)?")


class PluginError(Exception):
    """A plug-in that cannot be loaded or registered; the message names it and says why."""


class PluginSettings(Protocol):
    """What :func:`load_kinds` reads from the configuration (``citywatch.config.Config``)."""

    @property
    def plugins(self) -> Sequence[str]: ...


@dataclass(frozen=True, slots=True)
class Plugin:
    """A loaded plug-in: its kind, the object itself and where it came from (for messages)."""

    kind: str
    spec: KindSpec
    obj: Any
    source: str


def import_object(path: str) -> Any:
    """``package.module:attr`` (or ``package.module.attr``) to the object it names."""
    if not _PATH_RE.fullmatch(path):
        raise PluginError(f"plug-in {path!r}: expected 'package.module:attribute'")
    module_name, _, attr = path.partition(":")
    if not attr:
        module_name, _, attr = path.rpartition(".")
        if not module_name:
            raise PluginError(f"plug-in {path!r}: expected 'package.module:attribute'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginError(f"plug-in {path!r}: cannot import {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PluginError(f"plug-in {path!r}: {module_name!r} has no {attr!r}") from None
    return obj


def _check(obj: Any, source: str) -> Plugin:
    kind, spec = getattr(obj, "kind", None), getattr(obj, "spec", None)
    if not isinstance(kind, str) or not is_kind(kind):
        raise PluginError(f"{source}: kind {kind!r}: expected a name like 'wind' "
                          "([a-z][a-z0-9_]*, not dispatch, alerts or deadletter)")
    if not isinstance(spec, KindSpec):
        raise PluginError(f"{source}: spec: expected a sensing.decode.KindSpec, "
                          f"got {type(spec).__name__}")
    return Plugin(kind, spec, obj, source)


def discover(paths: Iterable[str] = (), *, use_entry_points: bool = True) -> dict[str, Plugin]:
    """Plug-ins by kind: the entry-point group's, then those named by ``paths``.

    The same object found twice (an entry point also listed in the config) counts once.
    """
    found: dict[str, Plugin] = {}

    def add(plugin: Plugin) -> None:
        if plugin.kind in BUILTIN_KINDS:
            raise PluginError(f"{plugin.source}: kind {plugin.kind!r} is built in; "
                              "choose another name")
        have = found.get(plugin.kind)
        if have is not None and have.obj is not plugin.obj:
            raise PluginError(f"kind {plugin.kind!r} is claimed twice: by {have.source} and by "
                              f"{plugin.source}")
        if have is None:
            found[plugin.kind] = plugin
            log.info("device kind %r from %s", plugin.kind, plugin.source)

    if use_entry_points:
        for name, source, obj in _entry_points(ENTRY_POINT_GROUP):
            plugin = _check(obj, source)
            if plugin.kind != name:
                raise PluginError(f"{source}: the entry point's name must be the kind "
                                  f"({plugin.kind!r})")
            add(plugin)
    for i, path in enumerate(paths):
        obj = import_object(path)
        if isinstance(obj, Hazard):
            continue  # a hazard: register_hazards' business
        add(_check(obj, f"plugins[{i}] {path}"))
    return found


def _entry_points(group: str) -> Iterator[tuple[str, str, Any]]:
    """The group's entry points in name order, loaded: (name, where it came from, object)."""
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        source = f"entry point {ep.name} = {ep.value}"
        try:
            obj = ep.load()
        except Exception as exc:  # any import-time error of a third-party package
            raise PluginError(f"{source}: cannot load: {type(exc).__name__}: {exc}") from exc
        yield ep.name, source, obj


def discover_hazards(paths: Iterable[str] = (), *, use_entry_points: bool = True
                     ) -> dict[str, tuple[Hazard, str]]:
    """Plug-in hazards by name, with where each came from: the ``citywatch.hazards``
    entry-point group's, then the :class:`~rules.hazard.Hazard` objects among ``paths``."""
    found: dict[str, tuple[Hazard, str]] = {}

    def add(obj: Hazard, source: str) -> None:
        have = found.get(obj.name)
        if have is not None and have[0] is not obj:
            raise PluginError(f"hazard {obj.name!r} is claimed twice: by {have[1]} and by "
                              f"{source}")
        found[obj.name] = (obj, source)

    if use_entry_points:
        for name, source, obj in _entry_points(HAZARD_ENTRY_POINT_GROUP):
            if not isinstance(obj, Hazard):
                raise PluginError(f"{source}: expected a rules.hazard.Hazard, got "
                                  f"{type(obj).__name__}")
            if obj.name != name:
                raise PluginError(f"{source}: the entry point's name must be the hazard's "
                                  f"({obj.name!r})")
            add(obj, source)
    for i, path in enumerate(paths):
        obj = import_object(path)
        if isinstance(obj, Hazard):
            add(obj, f"plugins[{i}] {path}")
    return found


def register_hazards(paths: Iterable[str] = (), *, use_entry_points: bool = True
                     ) -> tuple[Hazard, ...]:
    """Discover the plug-in hazards and register them (``rules.registry``); the ones added."""
    added: list[Hazard] = []
    for name, (hazard, source) in discover_hazards(
            paths, use_entry_points=use_entry_points).items():
        if registry.get(name) is hazard:
            continue
        try:
            registry.register(hazard, source)
        except registry.HazardError as exc:
            raise PluginError(str(exc)) from None
        log.info("hazard %r from %s", name, source)
        added.append(hazard)
    return tuple(added)


def load_plugins(config: PluginSettings, *, use_entry_points: bool = True) -> dict[str, Plugin]:
    return discover(config.plugins, use_entry_points=use_entry_points)


def with_report_categories(kinds: Mapping[str, KindSpec], categories: Iterable[str]
                           ) -> Mapping[str, KindSpec]:
    """``kinds`` with the grid terminal's ``report`` accepting every reportable hazard's
    category (the hazard registry's, plug-ins' included) and ``other``: a hazard module, not the
    decoder, says whether grid workers can report it."""
    grid = kinds.get("grid")
    report = None if grid is None else grid.events.get("report")
    field = None if report is None else report.required.get("category")
    if grid is None or report is None or not isinstance(field, Text) or field.choices is None:
        return kinds
    choices = frozenset(categories) | {OTHER_CATEGORY}
    if choices == field.choices:
        return kinds
    report = replace(report, required={**report.required,
                                       "category": replace(field, choices=choices)})
    return MappingProxyType({**kinds, "grid": replace(grid, events={**grid.events,
                                                                    "report": report})})


def kinds_of(plugins: Mapping[str, Plugin]) -> Mapping[str, KindSpec]:
    """The built-in kinds plus the plug-ins', for :class:`sensing.decode.Decoder`."""
    return MappingProxyType({**BUILTIN_KINDS, **{k: p.spec for k, p in plugins.items()}})


def load_kinds(config: PluginSettings, *, use_entry_points: bool = True,
               device_kinds: Iterable[str] = ()) -> Mapping[str, KindSpec]:
    """Every kind the decoder must know: built in, from entry points and from ``config.plugins``.

    ``device_kinds`` (the registry's kinds) are checked: a device of a kind nobody registered
    would have every message dead-lettered as ``unknown_kind``, so that is logged at start.
    """
    plugins = load_plugins(config, use_entry_points=use_entry_points)
    kinds = with_report_categories(kinds_of(plugins), registry.report_categories())
    for kind in sorted(set(device_kinds) - set(kinds)):
        log.warning("devices of kind %r are registered but no plug-in provides that kind: "
                    "their messages will be rejected (unknown_kind)", kind)
    return kinds
