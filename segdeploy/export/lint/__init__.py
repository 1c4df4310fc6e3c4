"""Static TensorRT 10 compatibility check of an ONNX file, without TensorRT.

``tensorrt`` holds the operator rules and ``lint_onnx``; ``qdq`` the rules for explicitly
quantized files; ``report`` the issues and verdict they produce.
"""

from __future__ import annotations

from segdeploy.export.lint.qdq import QDQ_RULES, check_qdq
from segdeploy.export.lint.report import LintIssue, LintReport
from segdeploy.export.lint.tensorrt import lint_onnx

__all__ = ["QDQ_RULES", "LintIssue", "LintReport", "check_qdq", "lint_onnx"]
