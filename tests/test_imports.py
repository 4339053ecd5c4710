"""The import structure of vision_tasks: no cycles, and each task's data module imports no other format."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import vision_tasks

# The names vision_tasks.data exported before it became a package of packages: all must still resolve.
DATA_EXPORTS = [
    "DETECTION_AUGMENTATIONS", "IGNORE_INDEX", "IMAGE_EXTENSIONS", "MEAN_PIXEL", "SHAPES",
    "VOC_CLASSES", "VOC_SEG_CLASSES", "CocoDetectionDataModule", "DataError", "DetectionAnnotations",
    "DetectionDataset", "DetectionRecord", "ImageFolderDataModule", "ImageFolderDataset", "RandomIoUCrop",
    "SegmentationDataset", "SegmentationFolderDataModule", "SegmentationRecord", "SyntheticClassificationDataModule",
    "SyntheticDetectionDataModule", "SyntheticSegmentationDataModule", "VOCDetectionDataModule",
    "VOCSegmentationDataModule", "ZoomOut", "classification_eval_transform", "classification_train_transform",
    "default_data_dir", "detection_collate", "detection_eval_transform", "detection_train_transform",
    "generate_classification", "generate_detection", "generate_segmentation", "check_mask_values", "load_mask",
    "load_rgb", "read_coco", "read_segmentation_folder", "read_voc", "read_voc_segmentation", "scan_image_folder",
    "segmentation_collate", "segmentation_eval_transform", "segmentation_train_transform", "synthetic_root",
    "voc_colormap",
]

# Added with the custom detection formats (flat VOC folder, YOLO txt).
DATA_EXPORTS += ["VOCFolderDetectionDataModule", "YOLODetectionDataModule", "read_voc_folder", "read_yolo"]

DETECTION_FORMATS = [
    "pycocotools",
    "vision_tasks.data.formats.coco",
    "vision_tasks.data.formats.voc_xml",
    "vision_tasks.data.formats.voc_folder",
    "vision_tasks.data.formats.yolo",
]
MASK_FORMATS = [
    "vision_tasks.data.formats.masks",
    "vision_tasks.data.formats.voc_segmentation",
    "vision_tasks.data.formats.mask_folder",
]

# For each data module: the modules that importing it must not load.
NOT_IMPORTED = {
    "vision_tasks.data.modules.classification": [
        *DETECTION_FORMATS,
        *MASK_FORMATS,
        "vision_tasks.data.synthetic.detection",
        "vision_tasks.data.synthetic.segmentation",
        "vision_tasks.data.transforms.detection",
        "vision_tasks.data.transforms.segmentation",
    ],
    "vision_tasks.data.modules.detection": [
        *MASK_FORMATS,
        "vision_tasks.data.formats.voc_folder",
        "vision_tasks.data.formats.yolo",
        "vision_tasks.data.synthetic.segmentation",
        "vision_tasks.data.transforms.segmentation",
    ],
    "vision_tasks.data.modules.detection_custom": [
        *MASK_FORMATS,
        "vision_tasks.data.synthetic.segmentation",
        "vision_tasks.data.transforms.segmentation",
    ],
    "vision_tasks.data.modules.segmentation": [
        *DETECTION_FORMATS,
        "vision_tasks.data.formats.detection",
        "vision_tasks.data.synthetic.detection",
        "vision_tasks.data.transforms.detection",
    ],
    "vision_tasks.data": ["pycocotools", "vision_tasks.data.formats", "vision_tasks.data.modules"],
}


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of vision_tasks: name -> (source file, is a package)."""
    root = Path(vision_tasks.__file__)
    found = {"vision_tasks": (root, True)}
    for info in pkgutil.walk_packages(vision_tasks.__path__, "vision_tasks.", onerror=lambda name: None):
        folder = Path(info.module_finder.path)  # a FileFinder: no need to import the module to find its file
        last = info.name.rpartition(".")[2]
        path = folder / last / "__init__.py" if info.ispkg else folder / f"{last}.py"
        if path.is_file():
            found[info.name] = (path, info.ispkg)
    return found


def _import_graph(modules: dict[str, tuple[Path, bool]]) -> dict[str, set[str]]:
    """module -> the modules of vision_tasks it imports, at module level or in a function alike.

    ``import a.b.c`` and ``from a.b.c import x`` are edges to ``a.b.c`` (a package's ``__init__`` when
    it is one); ``from a.b import c`` to ``a.b.c`` when that is a module, else to ``a.b``. The
    implicit import of the parent packages is not counted.
    """

    def known(name: str) -> str | None:  # the longest prefix of ``name`` that is a module of ours
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    package = name if is_package else name.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        package = package.rpartition(".")[0]
                    base = f"{package}.{node.module}" if node.module else package
                else:
                    base = node.module or ""
                submodules = (f"{base}.{alias.name}" for alias in node.names)
                targets = [sub if sub in modules else base for sub in submodules]
            else:
                continue
            edges.update(target for t in targets if t.startswith("vision_tasks") and (target := known(t)))
        edges.discard(name)
        graph[name] = edges
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_import_graph_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _find_cycle(graph) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_in_vision_tasks():
    modules = _modules()
    graph = _import_graph(modules)
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
    # the walk saw the whole package, relative imports resolved
    assert "vision_tasks.data.synthetic.cache" in graph["vision_tasks.data.synthetic.classification"]


@pytest.mark.parametrize("module", sorted(NOT_IMPORTED))
def test_a_data_module_imports_no_other_format(module):
    code = (
        f"import sys, json, {module}\n"
        f"print(json.dumps(sorted(m for m in {NOT_IMPORTED[module]!r} if m in sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == [], f"importing {module} imported these"


def test_every_exported_name_resolves():
    import vision_tasks.data as data
    import vision_tasks.data.synthetic as synthetic
    import vision_tasks.data.transforms as transforms

    assert set(DATA_EXPORTS) <= set(data.__all__)
    for package in (data, synthetic, transforms):
        for name in package.__all__:
            assert getattr(package, name) is not None, f"{package.__name__}.{name}"
        assert set(package.__all__) <= set(dir(package))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        data.nothing  # noqa: B018
