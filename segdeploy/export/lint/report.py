"""What a lint finds: issues and the verdict."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from segdeploy.artifact import Choice

if TYPE_CHECKING:
    import onnx


class Severity(Choice):
    """How bad a finding is: an error stops TensorRT's parser, a warning does not."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class LintIssue:
    """One finding: ``severity`` is ``ERROR`` (the parser refuses it) or ``WARNING``."""

    severity: Severity
    node: str
    op_type: str
    message: str
    rule: str = ""  # a stable name for rule families (e.g. the Q/DQ rules ``qdq-*``)

    def __post_init__(self) -> None:
        object.__setattr__(self, "severity", Severity(self.severity))  # "error" from a caller becomes the enum


@dataclass
class LintReport:
    """The lint verdict for one model."""

    opset: int | None
    ir_version: int
    issues: list[LintIssue] = field(default_factory=list)
    node_count: int = 0

    @property
    def errors(self) -> list[LintIssue]:
        return [i for i in self.issues if i.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[LintIssue]:
        return [i for i in self.issues if i.severity is Severity.WARNING]

    @property
    def ok(self) -> bool:
        """True when nothing would stop TensorRT 10's parser."""
        return not self.errors

    def summary(self) -> str:
        """One-line verdict, e.g. ``"TensorRT 10: ok (412 nodes, 0 warnings)"``."""
        warnings = _plural(len(self.warnings), "warning")
        if self.ok:
            return f"TensorRT 10: ok ({self.node_count} nodes, {warnings})"
        return f"TensorRT 10: not supported ({self.node_count} nodes, {_plural(len(self.errors), 'error')}, {warnings})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": "TensorRT 10",
            "ok": self.ok,
            "opset": self.opset,
            "ir_version": self.ir_version,
            "node_count": self.node_count,
            "summary": self.summary(),
            "issues": [asdict(i) for i in self.issues],
        }


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    import onnx

    for attr in node.attribute:
        if attr.name == name:
            value = onnx.helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _type_name(elem_type: int) -> str:
    import onnx

    return onnx.TensorProto.DataType.Name(elem_type)
