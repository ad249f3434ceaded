"""Dataset sources: one registry from ``data.source`` to the loader that turns a dataset root
into ``Study`` rows, so every stage loads studies through one call.

    data = open_source("chexpert", "/data/CheXpert-v1.0-small")
    studies = data.load_studies(splits=["train"])

A source names its loader, the index files that mark one of its roots, whether its studies carry
report text (the teacher and the report decoder need it; a source without reports runs the
stages that need no text), and, for ``images: all``, how to read each image's view.

The phantom is written in the MIMIC-CXR-JPG layout, so it loads as ``mimic``. A new layout is one
``register(Source(...))`` call in its loader module, imported below.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterable

from kdistill.data.study import Study
from kdistill.errors import DataError


@dataclasses.dataclass(frozen=True)
class Source:
    name: str
    # (root, splits=None, views=..., images="first"|"all", on_error=..., *, counter=None,
    #  check_images=True, **options) -> list[Study]
    loader: Callable[..., list[Study]]
    index_files: tuple[str, ...]  # any one of them marks a root of this source
    has_reports: bool = True
    image_views: Callable[[Path], dict[str, str]] | None = None  # dicom_id -> view, for images="all"
    description: str = ""


_REGISTRY: dict[str, Source] = {}


def register(source: Source) -> Source:
    _REGISTRY[source.name] = source
    return source


def source_names() -> tuple[str, ...]:
    _load_builtin()
    return tuple(_REGISTRY)


def get_source(name: str) -> Source:
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown data source {name!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


@dataclasses.dataclass(frozen=True)
class DataSource:
    """A source at a root, with its loader options (e.g. a separate reports tree)."""

    name: str
    root: Path
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def source(self) -> Source:
        return get_source(self.name)

    @property
    def has_reports(self) -> bool:
        return self.source.has_reports

    def check_root(self) -> None:
        """A ``DataError`` unless ``root`` is a folder holding one of the source's index files."""
        if not self.root.is_dir():
            raise DataError(self.root, f"data root for source {self.name!r} does not exist or is not a folder")
        wanted = self.source.index_files
        if not any((self.root / name).is_file() for name in wanted):
            raise DataError(self.root, f"not a {self.name} root: none of {', '.join(wanted)} found")

    def load_studies(self, splits: Iterable[str] | None = None, **kwargs: Any) -> list[Study]:
        return self.source.loader(self.root, splits=None if splits is None else list(splits),
                                  **{**self.options, **kwargs})

    def image_views(self) -> dict[str, str]:
        read = self.source.image_views
        return read(self.root) if read is not None else {}


def open_source(name: str, root: str | Path, **options: Any) -> DataSource:
    get_source(name)  # an unknown name fails here, naming the known ones
    return DataSource(name, Path(root).expanduser(), {k: v for k, v in options.items() if v is not None})


BUILTIN_MODULES = ("kdistill.data.mimic", "kdistill.data.chexpert", "kdistill.data.nih")


def _load_builtin() -> None:
    # Each loader module registers its source when imported; imported here, lazily, so that
    # `import kdistill.data.sources` stays cheap and a loader may import this module.
    import importlib

    for module in BUILTIN_MODULES:
        importlib.import_module(module)
