"""The stand-in's model registry entries: names, ModelEntry (details, Modelfile, digests)."""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from standins.ollama.wire import _dumps, go_time

DEFAULT_MODELS = ("llama3.1:8b", "voice-assistant:latest")
STATE_FILE_NAME = "fake-ollama-models.json"
DEFAULT_NUM_CTX = 4096
DEFAULT_TEMPLATE = (
    "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n"
    "{{ .System }}<|eot_id|>{{ end }}{{ range .Messages }}"
    "<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
    "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)
# Model families with the thinking capability (Ollama infers it from the template's tags);
# gpt-oss alone uses the harmony parser, the only one that takes a think level string.
THINKING_FAMILIES = ("qwen3", "deepseek-r1", "gpt-oss", "magistral")
HARMONY_FAMILIES = ("gpt-oss",)
_NAME_RE = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/){0,2}[A-Za-z0-9][\w.-]*(?::\w[\w.-]{0,79})?$")


def full_name(name: str) -> str:
    """A model's name as model.ParseName completes it, as Ollama's capability errors give it."""
    short = normalize_model(name)
    parts = short.split("/")
    return "/".join(["registry.ollama.ai", "library"][: max(0, 3 - len(parts))] + parts)


def normalize_model(name: str) -> str:
    """Canonical short model name: a missing tag means ``:latest``."""
    name = name.strip()
    for prefix in ("registry.ollama.ai/library/", "library/"):
        if name.lower().startswith(prefix):
            name = name[len(prefix) :]
    if ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return name


def valid_model_name(name: Any) -> bool:
    """Whether Ollama's ParseName would accept this model name."""
    return isinstance(name, str) and bool(_NAME_RE.match(name.strip()))


# --------------------------------------------------------------------------
# models


def _param_billions(name: str) -> float:
    """Parameter count (billions) guessed from a tag such as ``8b``; 8 else."""
    match = re.search(r"(\d+(?:\.\d+)?)b(?![a-z])", name.lower())
    return float(match.group(1)) if match else 8.0


def _go_value(value: Any) -> str:
    """A PARAMETER value as Ollama's ``%#v`` prints it, each number a float64 (JSON-loaded)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return json.dumps(value, ensure_ascii=False)  # strconv.Quote keeps printable Unicode
    import decimal  # only /api/show needs it

    number = decimal.Decimal(repr(float(value))).normalize()
    exponent = number.adjusted()
    # strconv.FormatFloat(v, 'g', -1, 64): "1" not "1.0", and %e from 1e+06 up or below 1e-04.
    if number.is_zero() or -4 <= exponent < 6:
        return format(number, "f")
    sign, digits, _ = number.as_tuple()
    mantissa = ".".join(filter(None, [str(digits[0]), "".join(map(str, digits[1:]))]))
    return f"{'-' if sign else ''}{mantissa}e{exponent:+03d}"


@dataclass
class ModelEntry:
    """One installed model with the metadata /api/tags and /api/show report."""

    name: str
    modified_ns: int
    billions: float = 8.0
    parent_model: str = ""
    system: str = ""
    template: str = DEFAULT_TEMPLATE
    parameters: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fresh(cls, name: str) -> ModelEntry:
        """A newly pulled model."""
        return cls(name=name, modified_ns=time.time_ns(), billions=_param_billions(name))

    @property
    def digest(self) -> str:
        """Manifest digest (hex), stable for the same name and content."""
        key = _dumps([self.name, self.parent_model, self.system, self.parameters])
        return hashlib.sha256(key.encode()).hexdigest()

    @property
    def blob_digest(self) -> str:
        """Digest of the weights layer, shared by models built on the same base."""
        base = self.parent_model or self.name
        return "sha256:" + hashlib.sha256(f"blob:{base}".encode()).hexdigest()

    @property
    def size(self) -> int:
        """Bytes on disk, roughly a Q4_K_M file for that many parameters."""
        return int(self.billions * 580_000_000) + int(self.digest[:4], 16)

    def details(self) -> dict[str, Any]:
        """The api.ModelDetails object."""
        return {
            "parent_model": self.parent_model,
            "format": "gguf",
            "family": "llama",
            "families": ["llama"],
            "parameter_size": f"{self.billions:.1f}B",
            "quantization_level": "Q4_K_M",
        }

    def tags_item(self) -> dict[str, Any]:
        """One /api/tags entry."""
        return {
            "name": self.name,
            "model": self.name,
            "modified_at": go_time(self.modified_ns),
            "size": self.size,
            "digest": self.digest,
            "details": self.details(),
        }

    def parameters_text(self) -> str:
        """Parameters as /api/show prints them (``%-30s %#v`` per value)."""
        lines = []
        for key, value in self.parameters.items():
            for item in value if isinstance(value, list) else [value]:
                lines.append(f"{key:<30} {_go_value(item)}")
        return "\n".join(lines)

    def modelfile(self) -> str:
        """The Modelfile text /api/show returns."""
        text = (
            '# Modelfile generated by "ollama show"\n'
            "# To build a new Modelfile based on this, replace FROM with:\n"
            f"# FROM {self.name}\n\n"
            f"FROM /root/.ollama/models/blobs/{self.blob_digest.replace(':', '-')}\n"
            f'TEMPLATE """{self.template}"""\n'
        )
        if self.system:
            text += f'SYSTEM """{self.system}"""\n'
        for key, value in self.parameters.items():
            for item in value if isinstance(value, list) else [value]:
                text += f"PARAMETER {key} {item}\n"
        return text
