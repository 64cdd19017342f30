"""Imports torchvision next to the CPU build of torch, for its pure-Python models as test references.

PyPI's torchvision wheel carries compiled ops built for the CUDA torch; next to the CPU torch they fail to load, which
torchvision tolerates, except that 0.28's import registers fake kernels for `torchvision::nms` and `::qnms`
unconditionally and stops on the missing operators. Declaring the two schemas (never run) lets the import finish.
"""

import sys

import pytest

_schemas = None  # the torch.library.Library holding the declarations must outlive the import


def import_torchvision():
    """torchvision, or a pytest skip when it is not installed."""
    global _schemas
    torch = pytest.importorskip("torch")
    try:
        import torchvision
    except ModuleNotFoundError:
        pytest.skip("torchvision is not installed (the test extra adds it)")
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        _schemas = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            _schemas.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import torchvision
    return torchvision
