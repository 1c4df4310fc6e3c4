"""TensorRT's real Python API, without TensorRT or a GPU: a conformance fake for tests.

NVIDIA publishes the Python bindings alone as a small wheel (``tensorrt-cu12-bindings``). Its
``tensorrt.so`` takes only nine C symbols from ``libnvinfer``, ``libnvonnxparser`` and
``libnvinfer_plugin``; stub libraries that define them (returning NULL/0) let the module import, and
then its enums, classes and pybind11 signatures (each function's ``__doc__``, each property's
``fget.__doc__``) are the real ones of that version. Nothing native can run (a ``Builder`` cannot be
made), so this module:

1. downloads the wheel once per version into a cache directory, builds the stubs with gcc, and in a
   subprocess dumps the API to JSON (:func:`load_api`; ``python trt_bindings.py dump PKG_DIR OUT.json``
   is the subprocess side);
2. builds from that JSON a fake ``tensorrt`` module (:func:`make_fake_tensorrt`) whose every call is
   checked against the real signatures: the method exists, the positional count, the keyword names,
   each argument's type (ints for ``SupportsInt``, buffers, ``str``, the right enum, a tuple/list or
   ``Dims`` for shapes, the right class for objects). Enum members absent from that version raise
   ``AttributeError``; read-only or unknown properties cannot be set. Calls return fakes of the declared
   return type, or what a test scripts for them (``behaviour``).

Run as a script, this file must not import anything outside the standard library.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

# The lines segdeploy supports: JetPack 6's 10.3, the newest 10.x, and an 11.x.
VERSIONS = ("10.3.0", "10.16.1.11", "11.4.0.106")
DIST = "tensorrt-cu12-bindings"
PACKAGE = "tensorrt_bindings"
MODULE = "tensorrt_bindings.tensorrt"

# What tensorrt.so takes from TensorRT's native libraries (`nm -D --undefined-only`), per library.
STUB_SYMBOLS = {
    "libnvinfer": (
        "createInferBuilder_INTERNAL",
        "createInferRefitter_INTERNAL",
        "createInferRuntime_INTERNAL",
        "getBuilderPluginRegistry",
        "getPluginRegistry",
    ),
    "libnvonnxparser": ("createNvOnnxParser_INTERNAL", "createNvOnnxParserRefitter_INTERNAL", "getNvOnnxParserVersion"),
    "libnvinfer_plugin": ("initLibNvInferPlugins",),
}


class BindingsUnavailable(Exception):
    """The bindings of one version cannot be had here (no gcc, no download); the message says why."""


# --------------------------------------------------------------------------- fetching and dumping
def cache_root() -> Path:
    """``$SEGDEPLOY_TEST_CACHE`` or ``~/.cache/segdeploy/test-trt``."""
    env = os.environ.get("SEGDEPLOY_TEST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "segdeploy" / "test-trt"


def load_api(version: str, root: Path | None = None) -> dict[str, Any]:
    """The API of ``tensorrt-cu12-bindings==version`` as JSON data, made once and cached.

    Raises:
        BindingsUnavailable: gcc, pip, the network or the import is missing; the message says which.
    """
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    work = (root or cache_root()) / f"{version}-{tag}"
    # A dump is only as good as the code that made it: key it by this file's contents.
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    api_path = work / f"api-{digest}.json"
    if api_path.is_file():
        return json.loads(api_path.read_text(encoding="utf-8"))
    work.mkdir(parents=True, exist_ok=True)
    pkg_dir = _unpack(download_wheel(f"{DIST}=={version}", work, BindingsUnavailable), work / "pkg")
    stubs = _build_stubs(int(version.split(".")[0]), work / "stubs")
    env = dict(
        os.environ, LD_LIBRARY_PATH=os.pathsep.join(filter(None, [str(stubs), os.environ.get("LD_LIBRARY_PATH")]))
    )
    tmp = api_path.with_suffix(".tmp")
    run = subprocess.run(
        [sys.executable, __file__, "dump", str(pkg_dir), str(tmp)],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if run.returncode != 0:
        raise BindingsUnavailable(f"importing {DIST}=={version} with stub libraries failed: {last_line(run.stderr)}")
    os.replace(tmp, api_path)
    for stale in work.glob("api-*.json"):
        if stale != api_path:
            stale.unlink(missing_ok=True)
    return json.loads(api_path.read_text(encoding="utf-8"))


def download_wheel(requirement: str, work: Path, error: type[Exception], timeout: int = 300) -> Path:
    """The wheel of ``requirement`` in ``work``, downloaded once with pip; ``error`` with pip's reason otherwise."""
    wheels = sorted(work.glob("*.whl"))
    if wheels:
        return wheels[0]
    dest = Path(tempfile.mkdtemp(dir=work))
    try:
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
                "--retries",
                "1",
                "--timeout",
                "20",
                "-d",
                str(dest),
                requirement,
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise error(f"cannot download {requirement}: {exc}") from None
    found = sorted(dest.glob("*.whl"))
    if run.returncode != 0 or not found:
        shutil.rmtree(dest, ignore_errors=True)
        raise error(f"cannot download {requirement} with pip: {last_line(run.stderr)}")
    wheel = work / found[0].name
    os.replace(found[0], wheel)
    shutil.rmtree(dest, ignore_errors=True)
    return wheel


def _unpack(wheel: Path, pkg_dir: Path) -> Path:
    if not (pkg_dir / PACKAGE / "__init__.py").is_file():
        tmp = Path(tempfile.mkdtemp(dir=pkg_dir.parent))
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(tmp)
        shutil.rmtree(pkg_dir, ignore_errors=True)
        os.replace(tmp, pkg_dir)
    return pkg_dir


def _build_stubs(major: int, stubs: Path) -> Path:
    names = [f"{lib}.so.{major}" for lib in STUB_SYMBOLS]
    if all((stubs / name).is_file() for name in names):
        return stubs
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise BindingsUnavailable("no C compiler (gcc) to build TensorRT stub libraries")
    stubs.mkdir(parents=True, exist_ok=True)
    for lib, symbols in STUB_SYMBOLS.items():
        source = stubs / f"{lib}.c"
        source.write_text("".join(f"void *{s}(void) {{ return 0; }}\n" for s in symbols), encoding="utf-8")
        target = stubs / f"{lib}.so.{major}"
        run = subprocess.run(
            [gcc, "-shared", "-fPIC", f"-Wl,-soname,{target.name}", "-o", str(target), str(source)],
            check=False,
            capture_output=True,
            text=True,
        )
        if run.returncode != 0:
            raise BindingsUnavailable(f"gcc could not build {target.name}: {last_line(run.stderr)}")
    return stubs


def last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


# --------------------------------------------------------------------------- pybind11 signatures
def parse_doc(doc: str | None, name: str) -> list[dict[str, Any]]:
    """The signatures a pybind11 ``__doc__`` declares (one per overload); [] when it declares none."""
    lines = (doc or "").splitlines()
    if not lines:
        return []
    if lines[0].startswith(f"{name}(*args, **kwargs)") and len(lines) > 1 and lines[1].startswith("Overloaded"):
        heads = [line.split(". ", 1)[1] for line in lines[2:] if line[:1].isdigit() and f". {name}(" in line]
    else:
        heads = [lines[0]]
    sigs = [parse_signature(head, name) for head in heads]
    return [s for s in sigs if s is not None]


def parse_signature(text: str, name: str = "") -> dict[str, Any] | None:
    """``name(self: T, a: int = 0) -> R`` -> ``{"params": [...], "returns": "R"}``; None if it is not one."""
    if not text.startswith(f"{name}("):
        return None
    start = len(name)
    end = _closing(text, start)
    if end < 0:
        return None
    params = [_parse_param(p) for p in _split_top(text[start + 1 : end])]
    rest = text[end + 1 :].strip()
    returns = _clean_type(rest[2:].strip()) if rest.startswith("->") else "None"
    return {"params": params, "returns": returns}


_OPEN, _CLOSE = "([{<", ")]}>"


def _closing(text: str, start: int) -> int:
    depth, quote = 0, ""
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in _OPEN:
            depth += 1
        elif ch in _CLOSE and not (ch == ">" and text[i - 1] == "-"):
            depth -= 1
            if depth == 0:
                return i
    return -1


def _split_top(text: str, sep: str = ",") -> list[str]:
    parts, depth, quote, current = [], 0, "", []
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in _OPEN:
            depth += 1
        elif ch in _CLOSE and not (ch == ">" and i and text[i - 1] == "-"):
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    tail = "".join(current).strip()
    return parts + [tail] if tail or parts else parts


def _parse_param(text: str) -> dict[str, Any]:
    kind = "var_keyword" if text.startswith("**") else "var_positional" if text.startswith("*") else "normal"
    text = text.lstrip("*")
    default = None
    head = text
    cut = _find_top(text, " = ")
    if cut >= 0:
        head, default = text[:cut], text[cut + 3 :].strip()
    name, _, annotation = head.partition(":")
    return {"name": name.strip(), "type": _clean_type(annotation.strip()) or "object", "default": default, "kind": kind}


def _find_top(text: str, needle: str) -> int:
    depth, quote = 0, ""
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
        elif depth == 0 and text.startswith(needle, i):
            return i
    return -1


def _clean_type(text: str) -> str:
    return text.replace(f"{MODULE}.", "").replace("tensorrt.", "").strip()


# --------------------------------------------------------------------------- the fake module
# Classes pybind11 converts implicitly from a Python sequence of ints (TensorRT registers
# py::implicitly_convertible for its Dims types), so a tuple is a valid shape argument.
_SEQUENCE_CONVERTIBLE_PREFIXES = ("Dims", "Permutation")
_INSTALLED_DUNDERS = ("__len__", "__getitem__", "__setitem__", "__str__", "__contains__", "__call__")


class Call:
    """One call the code made: ``Class.method`` (or ``function``), the arguments it passed by parameter name."""

    def __init__(self, name: str, args: dict[str, Any], target: Any = None) -> None:
        self.name, self.args, self.target = name, args, target

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.args.items())
        return f"{self.name}({shown})"


class FakeTensorRT(ModuleType):
    """A ``tensorrt`` module made from one version's dumped API; every call is checked and logged."""

    calls: list[Call]
    api: dict[str, Any]

    def calls_to(self, name: str) -> list[dict[str, Any]]:
        """The argument dicts of every call to ``name`` (``"IBuilderConfig.set_flag"``), in order."""
        return [c.args for c in self.calls if c.name == name]

    def called(self) -> list[str]:
        return [c.name for c in self.calls]

    def make(self, cls_name: str, *, props: Mapping[str, Any] | None = None, data: Any = None) -> Any:
        """A fake instance of ``cls_name`` (no constructor call), its properties set and type-checked."""
        cls = self._fake_types[cls_name]
        obj = cls._fake_new(data)
        for key, value in (props or {}).items():
            spec = cls._fake_property(key)
            if spec is None:
                raise AttributeError(f"{cls_name} has no property {key!r} in TensorRT {self.__version__}")
            problem = self._fake_check(spec["type"], value, returning=True)
            if problem:
                raise TypeError(f"{cls_name}.{key}: {problem}")
            obj._fake_state[key] = value
        return obj

    def dims(self, shape: Any) -> Any:
        """A fake ``Dims`` holding ``shape``."""
        return self.make("Dims", data=[int(d) for d in shape])

    def host_memory(self, data: bytes) -> Any:
        """A fake ``IHostMemory`` (supports the buffer protocol like the real one)."""
        return self.make("IHostMemory", data=bytes(data))


def make_fake_tensorrt(api: dict[str, Any], behaviour: Mapping[str, Callable[..., Any]] | None = None) -> FakeTensorRT:
    """A fake ``tensorrt`` module that checks every call against ``api`` (from :func:`load_api`).

    Args:
        api: one version's dumped API.
        behaviour: ``{"Class.method": fn}`` (or ``"Class.property"``, ``"function"``): what a call returns.
            ``fn`` gets the fake ``self`` (none for functions) and the arguments by parameter name; what it
            returns is checked against the declared return type (None is allowed for objects, as pybind11
            returns None for a null pointer). Without one, a call returns a fake of its declared type
            (True for bool, 0 for int, [] for lists).

    Raises:
        KeyError: a behaviour names a method or property this version does not have.
    """
    module = FakeTensorRT("tensorrt")
    module.__version__ = api["version"]
    module.api = api
    module.calls = []
    behaviour = dict(_default_behaviour(module), **(behaviour or {}))
    types: dict[str, type] = {}
    module._fake_types = types
    module._fake_check = lambda type_text, value, returning=False: _check(types, type_text, value, returning)

    for qualname, members in api["enums"].items():
        types[qualname] = _make_enum(qualname, members)
    for qualname in _class_order(api["classes"]):
        types[qualname] = _make_class(module, qualname, api["classes"][qualname], types, behaviour)
    for qualname, spec in api["classes"].items():
        cls = types[qualname]
        for attr, target in spec["types"].items():
            type.__setattr__(cls, attr, types[target])
        for attr, (enum_name, member) in spec["constants"].items():
            type.__setattr__(cls, attr, getattr(types[enum_name], member))
    for qualname, cls in types.items():
        if "." not in qualname:
            setattr(module, qualname, cls)
    for alias, target in api["aliases"].items():
        setattr(module, alias, types[target])
    for name, (enum_name, member) in api["constants"].items():
        setattr(module, name, getattr(types[enum_name], member))
    for name, sigs in api["functions"].items():
        setattr(module, name, _make_callable(module, name, name, sigs, behaviour.get(name), bound=False))
    unknown = [key for key in behaviour if not _names_member(api, key)]
    if unknown:
        raise KeyError(f"behaviour for {', '.join(sorted(unknown))}: not in TensorRT {api['version']}")
    return module


def _names_member(api: dict[str, Any], key: str) -> bool:
    if key in api["functions"]:
        return True
    cls_name, _, member = key.rpartition(".")
    seen = [cls_name]
    while seen:
        spec = api["classes"].get(seen.pop())
        if spec is None:
            continue
        if (
            member in spec["methods"]
            or member in spec["properties"]
            or member in spec["static_methods"]
            or (member == "__init__" and spec["init"])
        ):
            return True
        seen.extend(spec["bases"])
    return False


def _class_order(classes: dict[str, dict[str, Any]]) -> list[str]:
    order: list[str] = []

    def add(name: str) -> None:
        if name not in order:
            for base in classes[name]["bases"]:
                add(base)
            order.append(name)

    for name in classes:
        add(name)
    return order


class _FakeEnumMember:
    __slots__ = ("_enum", "name", "value")

    def __init__(self, enum: type, name: str, value: int) -> None:
        object.__setattr__(self, "_enum", enum)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "value", value)

    def __int__(self) -> int:
        return self.value

    __index__ = __int__

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._enum is self._enum and other.value == self.value

    def __hash__(self) -> int:
        return hash((self._enum.__name__, self.value))

    def __repr__(self) -> str:
        return f"<{self._enum.__name__}.{self.name}: {self.value}>"

    def __str__(self) -> str:
        return f"{self._enum.__name__}.{self.name}"

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"{self!r} is read-only")


def _make_enum(qualname: str, members: dict[str, int]) -> type:
    short = qualname.rsplit(".", 1)[-1]
    member_type = type(short, (_FakeEnumMember,), {"__slots__": (), "__qualname__": qualname})
    instances = {name: member_type(member_type, name, value) for name, value in members.items()}
    for name, inst in instances.items():
        setattr(member_type, name, inst)
    member_type.__members__ = dict(instances)
    member_type._fake_enum = True
    return member_type


class _FakeObject:
    """Base of every fake TensorRT class: only real properties can be set, constructors are checked."""

    _fake_module: FakeTensorRT
    _fake_properties: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def _fake_new(cls, data: Any = None) -> Any:
        obj = cls.__new__(cls)
        object.__setattr__(obj, "_fake_state", {})
        object.__setattr__(obj, "_fake_data", {} if data is None else data)
        return obj

    @classmethod
    def _fake_property(cls, name: str) -> dict[str, Any] | None:
        for klass in cls.__mro__:
            spec = getattr(klass, "__dict__", {}).get("_fake_properties", {}).get(name)
            if spec is not None:
                return spec
        return None

    def __setattr__(self, key: str, value: Any) -> None:
        if type(self)._fake_property(key) is None:
            raise AttributeError(
                f"'{type(self).__qualname__}' object has no attribute '{key}' (TensorRT "
                f"{self._fake_module.__version__})"
            )
        object.__setattr__(self, key, value)

    def __repr__(self) -> str:
        return f"<fake tensorrt.{type(self).__qualname__}>"


class _FakeHostMemory(bytes):
    """IHostMemory supports the buffer protocol; in Python < 3.12 only a bytes subclass can."""


def _make_class(
    module: FakeTensorRT,
    qualname: str,
    spec: dict[str, Any],
    types: dict[str, type],
    behaviour: dict[str, Callable[..., Any]],
) -> type:
    bases = tuple(types[b] for b in spec["bases"]) or (_FakeObject,)
    namespace: dict[str, Any] = {
        "__qualname__": qualname,
        "_fake_module": module,
        "_fake_properties": spec["properties"],
    }
    if qualname == "IHostMemory":
        bases = (*bases, _FakeHostMemory)
        namespace["_fake_new"] = classmethod(_host_memory_new)
    if spec["init"]:
        namespace["__init__"] = _make_callable(
            module, f"{qualname}.__init__", "__init__", spec["init"], behaviour.get(f"{qualname}.__init__"), bound=True
        )
    else:

        def no_constructor(self: Any, *args: Any, **kwargs: Any) -> None:
            raise TypeError(f"tensorrt.{qualname}: No constructor defined!")

        namespace["__init__"] = no_constructor
    for name, sigs in spec["methods"].items():
        if name.startswith("__") and name not in _INSTALLED_DUNDERS:
            continue
        namespace[name] = _make_callable(
            module, f"{qualname}.{name}", name, sigs, behaviour.get(f"{qualname}.{name}"), bound=True
        )
    for name, sigs in spec["static_methods"].items():
        namespace[name] = staticmethod(
            _make_callable(module, f"{qualname}.{name}", name, sigs, behaviour.get(f"{qualname}.{name}"), bound=False)
        )
    for name, prop in spec["properties"].items():
        namespace[name] = _make_property(module, qualname, name, prop, behaviour.get(f"{qualname}.{name}"), types)
    short = qualname.rsplit(".", 1)[-1]
    return type(short, bases, namespace)


def _host_memory_new(cls: type, data: Any = None) -> Any:
    obj = bytes.__new__(cls, data or b"")
    object.__setattr__(obj, "_fake_state", {})
    object.__setattr__(obj, "_fake_data", data)
    return obj


def _make_property(
    module: FakeTensorRT,
    qualname: str,
    name: str,
    prop: dict[str, Any],
    behave: Callable[..., Any] | None,
    types: dict[str, type],
) -> property:
    full = f"{qualname}.{name}"

    def fget(self: Any) -> Any:
        module.calls.append(Call(full, {}, self))
        if name in self._fake_state:
            return self._fake_state[name]
        if behave is not None:
            value = behave(self)
            problem = _check(types, prop["type"], value, returning=True)
            if problem:
                raise AssertionError(f"scripted {full} returned a value the real property cannot: {problem}")
            return value
        return _default(module, types, prop["type"])

    def fset(self: Any, value: Any) -> None:
        if prop["readonly"]:
            raise AttributeError(f"{full} is read-only in TensorRT {module.__version__}")
        problem = _check(types, prop["type"], value)
        if problem:
            raise TypeError(f"{full} = {value!r}: {problem}")
        module.calls.append(Call(f"{full}=", {"value": value}, self))
        self._fake_state[name] = value

    return property(fget, fset, doc=f"{full}: {prop['type']}")


def _make_callable(
    module: FakeTensorRT,
    full: str,
    name: str,
    sigs: list[dict[str, Any]],
    behave: Callable[..., Any] | None,
    *,
    bound: bool,
) -> Callable[..., Any]:
    types = module._fake_types

    def call(*args: Any, **kwargs: Any) -> Any:
        target = args[0] if bound else None
        given = args[1:] if bound else args
        problems = []
        for sig in sigs:
            params = (
                sig["params"][1:] if bound and sig["params"] and sig["params"][0]["name"] == "self" else sig["params"]
            )
            bound_args = _bind(types, params, given, kwargs)
            if isinstance(bound_args, str):
                problems.append(f"({_describe(params)}): {bound_args}")
                continue
            module.calls.append(Call(full, bound_args, target))
            if name == "__init__":
                if target is not None:
                    object.__setattr__(target, "_fake_state", {})
                    object.__setattr__(target, "_fake_data", bound_args)
                if behave is not None:
                    behave(target, **bound_args)
                return None
            if behave is None:
                return _default(module, types, sig["returns"])
            value = behave(target, **bound_args) if bound else behave(**bound_args)
            problem = _check(types, sig["returns"], value, returning=True)
            if problem:
                raise AssertionError(f"scripted {full} returned a value the real method cannot: {problem}")
            return value
        if not sigs:
            raise TypeError(f"{full}: no signature recorded in TensorRT {module.__version__}")
        raise TypeError(
            f"{full}(): incompatible function arguments in TensorRT {module.__version__}; " + "; ".join(problems)
        )

    call.__name__ = name
    call.__qualname__ = full
    return call


def _describe(params: list[dict[str, Any]]) -> str:
    return ", ".join(
        f"{'*' if p['kind'] == 'var_positional' else '**' if p['kind'] == 'var_keyword' else ''}"
        f"{p['name']}: {p['type']}{' = ' + p['default'] if p['default'] else ''}"
        for p in params
    )


def _bind(
    types: dict[str, type], params: list[dict[str, Any]], args: tuple, kwargs: dict[str, Any]
) -> dict[str, Any] | str:
    normal = [p for p in params if p["kind"] == "normal"]
    var_args = any(p["kind"] == "var_positional" for p in params)
    var_kwargs = any(p["kind"] == "var_keyword" for p in params)
    if len(args) > len(normal) and not var_args:
        return f"takes {len(normal)} positional arguments but {len(args)} were given"
    bound: dict[str, Any] = {}
    for param, value in zip(normal, args):
        bound[param["name"]] = value
    for key, value in kwargs.items():
        param = next((p for p in normal if p["name"] == key), None)
        # pybind11 names parameters declared without py::arg "arg0", "arg1"...: those take no keywords.
        if param is None or key.startswith("arg") and key[3:].isdigit():
            if var_kwargs:
                bound[key] = value
                continue
            return f"unexpected keyword argument {key!r}"
        if key in bound:
            return f"got multiple values for argument {key!r}"
        bound[key] = value
    for param in normal:
        if param["name"] not in bound and param["default"] is None:
            return f"missing required argument {param['name']!r}"
    for param in normal:
        if param["name"] in bound:
            problem = _check(types, param["type"], bound[param["name"]])
            if problem:
                return f"argument {param['name']!r}: {problem}"
    return bound


def _resolve(types: dict[str, type], name: str) -> str | None:
    """A type name as the API spells it -> the registered class/enum name (C++ names included)."""
    if name in types:
        return name
    last = name.split("::")[-1]
    for candidate in (last, last[1:] if last.startswith("I") else None):
        if candidate and candidate in types:
            return candidate
    return None


def _parse_type(text: str) -> tuple[str, list[str]]:
    text = text.strip()
    if "[" in text and text.endswith("]"):
        head, inner = text.split("[", 1)
        return head.strip(), _split_top(inner[:-1])
    return text, []


def _check(types: dict[str, type], type_text: str, value: Any, returning: bool = False) -> str | None:
    """None when ``value`` fits the annotated type, else why not (strictly: no bool for int, no enum for int)."""
    text = type_text.strip()
    alternatives = _split_top(text, "|") if "|" in text else None
    if alternatives and len(alternatives) > 1:
        problems = [_check(types, alt, value, returning) for alt in alternatives]
        return None if any(p is None for p in problems) else " and ".join(p for p in problems if p)
    head, args = _parse_type(text)
    short = head.rsplit(".", 1)[-1] if head.startswith(("typing.", "collections.abc.", "typing_extensions.")) else head
    if short == "Optional":
        return None if value is None else _check(types, args[0], value, returning)
    if short == "Union":
        problems = [_check(types, alt, value, returning) for alt in args]
        return None if any(p is None for p in problems) else " and ".join(p for p in problems if p)
    got = _type_name(value)
    if short == "None":
        return None if value is None else f"expected None, got {got}"
    if short in ("int", "SupportsInt"):
        ok = isinstance(value, int) and not isinstance(value, (bool, _FakeEnumMember)) or _is_numpy_int(value)
        return None if ok else f"expected int, got {got}"
    if short in ("float", "SupportsFloat"):
        ok = isinstance(value, (int, float)) and not isinstance(value, (bool, _FakeEnumMember))
        return None if ok else f"expected float, got {got}"
    if short == "bool":
        return None if isinstance(value, bool) or type(value).__name__ == "bool_" else f"expected bool, got {got}"
    if short == "str":
        return None if isinstance(value, str) else f"expected str, got {got}"
    if short == "bytes":
        return (
            None
            if isinstance(value, bytes) and not isinstance(value, _FakeHostMemory)
            else f"expected bytes, got {got}"
        )
    if short in ("buffer", "Buffer", "memoryview"):
        try:
            memoryview(value)
        except TypeError:
            return f"expected a buffer (bytes, bytearray, memoryview, array), got {got}"
        return None
    if short == "slice":
        return None if isinstance(value, slice) else f"expected slice, got {got}"
    if short in ("tuple", "Tuple", "list", "List", "Sequence"):
        exact = {"tuple": tuple, "list": list}.get(short) if not args else None
        if exact is not None:  # pybind11's py::tuple / py::list accept subclasses (torch.Size is a tuple)
            return None if isinstance(value, exact) else f"expected {short}, got {got}"
        if returning and short in ("list", "List") and not isinstance(value, list):
            return f"expected a list, got {got}"
        if not isinstance(value, (list, tuple)):
            return f"expected a sequence ({text}), got {got}"
        if short in ("tuple", "Tuple") and args and not (len(args) == 2 and args[1] == "..."):
            if len(value) != len(args):
                return f"expected {len(args)} items ({text}), got {len(value)}"
            pairs = list(zip(args, value))
        else:
            pairs = [(args[0], item) for item in value] if args else []
        for index, (item_type, item) in enumerate(pairs):
            problem = _check(types, item_type, item, returning)
            if problem:
                return f"item {index}: {problem}"
        return None
    if short == "ndarray":
        return None if type(value).__name__ == "ndarray" else f"expected numpy.ndarray, got {got}"
    resolved = _resolve(types, head)
    if resolved is None:
        return None  # object, capsule, callables, iterators, unbound C++ types: not checkable here
    cls = types[resolved]
    if isinstance(value, cls):
        return None
    if returning and value is None and not getattr(cls, "_fake_enum", False):
        return None  # pybind11 returns None for a null pointer
    if not returning and resolved.startswith(_SEQUENCE_CONVERTIBLE_PREFIXES) and isinstance(value, (list, tuple)):
        return _check(types, "List[int]", list(value))
    return f"expected {resolved}, got {got}"


def _is_numpy_int(value: Any) -> bool:
    return type(value).__module__ == "numpy" and hasattr(value, "__index__") and "int" in type(value).__name__


def _type_name(value: Any) -> str:
    if isinstance(value, _FakeEnumMember):
        return f"{type(value).__qualname__} member"
    return type(value).__qualname__


def _default(module: FakeTensorRT, types: dict[str, type], type_text: str) -> Any:
    head, args = _parse_type(type_text)
    short = head.rsplit(".", 1)[-1]
    simple = {
        "None": None,
        "bool": True,
        "int": 0,
        "SupportsInt": 0,
        "float": 0.0,
        "SupportsFloat": 0.0,
        "str": "",
        "bytes": b"",
    }
    if short in simple:
        return simple[short]
    if short in ("list", "List", "Sequence", "Iterable", "Iterator"):
        return []
    if short in ("tuple", "Tuple"):
        return tuple(_default(module, types, a) for a in args)
    if short in ("buffer", "Buffer", "memoryview"):
        return memoryview(b"")
    resolved = _resolve(types, head)
    if resolved is None:
        return None
    cls = types[resolved]
    if getattr(cls, "_fake_enum", False):
        return next(iter(cls.__members__.values()))
    return cls._fake_new([] if resolved.startswith("Dims") else None)


def _default_behaviour(module: FakeTensorRT) -> dict[str, Callable[..., Any]]:
    """What value-like classes do: Dims hold their numbers, ParserError its text."""

    def dims_init(self: Any, shape: Any = ()) -> None:
        object.__setattr__(self, "_fake_data", [int(d) for d in shape])

    def dims_getitem(self: Any, arg0: Any) -> Any:
        if isinstance(arg0, slice):
            return tuple(self._fake_data[arg0])
        if not -len(self._fake_data) <= arg0 < len(self._fake_data):
            raise IndexError("Out of bounds")
        return self._fake_data[arg0]

    def error_text(self: Any) -> str:
        return str(self._fake_data or "")

    return {
        "Dims.__init__": dims_init,
        "Dims.__len__": lambda self: len(self._fake_data),
        "Dims.__getitem__": dims_getitem,
        "Dims.__str__": lambda self: "(" + ", ".join(map(str, self._fake_data)) + ")",
        "ParserError.__str__": error_text,
        "ParserError.desc": error_text,
        "IHostMemory.nbytes": lambda self: len(self),
    }


# --------------------------------------------------------------------------- a TensorRT that works
def scripted_tensorrt(
    api: dict[str, Any],
    *,
    input_name: str = "input",
    plan: bytes | None = b"PLAN",
    parse_errors: tuple[str, ...] = (),
    cache_matches: bool = True,
    deserializes: bool = True,
    tensors: Mapping[str, tuple[str, str]] | None = None,
    profile: tuple[tuple[int, ...], ...] = ((1, 3, 32, 32), (2, 3, 64, 64), (4, 3, 128, 128)),
    num_classes: int = 5,
    extra: Mapping[str, Callable[..., Any]] | None = None,
) -> FakeTensorRT:
    """A checked fake ``tensorrt`` scripted to behave like a working install.

    Building: the parser accepts the file (or reports ``parse_errors``), the network has one input
    ``input_name``, the build returns ``plan`` (None: failure), a timing cache serializes to its input plus
    ``b"+tuned"`` and is refused when ``cache_matches`` is False. Running: the engine has ``tensors``
    (name -> (TensorIOMode member, DataType member); default ``input`` FLOAT in, ``logits`` FLOAT out) with
    ``profile`` (min, opt, max) on the input; outputs are ``N x num_classes x H x W``.
    """
    tensors = dict(tensors or {input_name: ("INPUT", "FLOAT"), "logits": ("OUTPUT", "FLOAT")})
    names = list(tensors)

    def make(self: Any, cls: str, **kwargs: Any) -> Any:
        return self._fake_module.make(cls, **kwargs)

    def set_timing_cache(self: Any, cache: Any, ignore_mismatch: bool) -> bool:
        if cache._fake_data and not cache_matches and not ignore_mismatch:
            return False
        self._fake_data["cache"] = cache
        return True

    def set_input_shape(self: Any, name: str, shape: Any) -> bool:
        shape = tuple(int(d) for d in shape)
        ok = (
            name == names[0]
            and len(shape) == len(profile[0])
            and all(lo <= d <= hi for d, lo, hi in zip(shape, profile[0], profile[2]))
        )
        if ok:
            self._fake_data["shape"] = shape
        return ok

    def get_tensor_shape(self: Any, name: str) -> Any:
        shape = self._fake_data.get("shape")
        if shape is None:
            return self._fake_module.dims([-1, profile[0][1], -1, -1] if tensors[name][0] == "INPUT" else [-1] * 4)
        if tensors[name][0] == "INPUT":
            return self._fake_module.dims(shape)
        return self._fake_module.dims((shape[0], num_classes, shape[2], shape[3]))

    behaviour: dict[str, Callable[..., Any]] = {
        "OnnxParser.parse_from_file": lambda self, model: not parse_errors,
        "OnnxParser.num_errors": lambda self: len(parse_errors),
        "OnnxParser.get_error": lambda self, index: make(self, "ParserError", data=parse_errors[index]),
        "INetworkDefinition.num_inputs": lambda self: 1,
        "INetworkDefinition.get_input": lambda self, index: make(self, "ITensor", props={"name": input_name}),
        "IBuilderConfig.add_optimization_profile": lambda self, profile: 0,
        "IBuilderConfig.create_timing_cache": lambda self, serialized_timing_cache: make(
            self, "ITimingCache", data=bytes(memoryview(serialized_timing_cache))
        ),
        "IBuilderConfig.set_timing_cache": set_timing_cache,
        "IBuilderConfig.get_timing_cache": lambda self: self._fake_data.get("cache"),
        "ITimingCache.serialize": lambda self: self._fake_module.host_memory(self._fake_data + b"+tuned"),
        "Builder.build_serialized_network": lambda self, network, config, **_: (
            None if plan is None else self._fake_module.host_memory(plan)
        ),
        "Runtime.deserialize_cuda_engine": lambda self, **_: make(self, "ICudaEngine") if deserializes else None,
        "ICudaEngine.num_io_tensors": lambda self: len(names),
        "ICudaEngine.get_tensor_name": lambda self, index: names[index],
        "ICudaEngine.get_tensor_mode": lambda self, name: getattr(self._fake_module.TensorIOMode, tensors[name][0]),
        "ICudaEngine.get_tensor_dtype": lambda self, name: getattr(self._fake_module.DataType, tensors[name][1]),
        "ICudaEngine.get_tensor_profile_shape": lambda self, name, profile_index: (
            [self._fake_module.dims(d) for d in profile] if tensors[name][0] == "INPUT" and profile_index == 0 else []
        ),
        "ICudaEngine.create_execution_context": lambda self, **_: make(self, "IExecutionContext"),
        "IExecutionContext.set_input_shape": set_input_shape,
        "IExecutionContext.infer_shapes": lambda self: [] if "shape" in self._fake_data else [names[0]],
        "IExecutionContext.get_tensor_shape": get_tensor_shape,
        "IExecutionContext.set_tensor_address": lambda self, name, memory: name in tensors,
        "IExecutionContext.execute_async_v3": lambda self, stream_handle: True,
    }
    behaviour.update(extra or {})
    return make_fake_tensorrt(api, behaviour)


# --------------------------------------------------------------------------- the subprocess side
def dump(module: ModuleType) -> dict[str, Any]:
    """Every enum, class (methods, properties, constants) and function of an imported bindings module."""
    import inspect

    def local(obj: Any) -> bool:
        return isinstance(obj, type) and getattr(obj, "__module__", "") == MODULE

    def is_enum(cls: type) -> bool:
        return isinstance(getattr(cls, "__members__", None), dict)

    enums: dict[str, dict[str, int]] = {}
    classes: dict[str, dict[str, Any]] = {}
    seen: set[type] = set()

    def member_ref(value: Any) -> list[str] | None:
        kind = type(value)
        if local(kind) and is_enum(kind):
            return [kind.__qualname__, value.name]
        return None

    def visit(cls: type) -> None:
        if cls in seen:
            return
        seen.add(cls)
        if is_enum(cls):
            enums[cls.__qualname__] = {k: int(v) for k, v in cls.__members__.items()}
            return
        entry: dict[str, Any] = {
            "bases": [b.__qualname__ for b in cls.__bases__ if local(b)],
            "init": None,
            "methods": {},
            "static_methods": {},
            "properties": {},
            "constants": {},
            "types": {},
        }
        for base in cls.__bases__:
            if local(base):
                visit(base)
        for attr, raw in cls.__dict__.items():
            if attr in ("__doc__", "__module__", "_pybind11_conduit_v1_") or attr.startswith("__pybind11"):
                continue
            if local(raw):
                entry["types"][attr] = raw.__qualname__
                visit(raw)
            elif isinstance(raw, property):
                doc = raw.fget.__doc__ if raw.fget is not None else None
                sigs = parse_doc((doc or "").strip(), "") if doc else []
                entry["properties"][attr] = {
                    "type": sigs[0]["returns"] if sigs else "object",
                    "readonly": raw.fset is None,
                    "static": type(raw).__name__ == "pybind11_static_property",
                }
            elif isinstance(raw, staticmethod):
                entry["static_methods"][attr] = parse_doc(getattr(cls, attr).__doc__, attr)
            elif type(raw).__name__ == "instancemethod":
                sigs = parse_doc(getattr(cls, attr).__doc__, attr)
                if attr == "__init__":
                    entry["init"] = sigs
                else:
                    entry["methods"][attr] = sigs
            elif member_ref(raw) is not None:
                entry["constants"][attr] = member_ref(raw)
        classes[cls.__qualname__] = entry

    functions: dict[str, list[dict[str, Any]]] = {}
    constants: dict[str, list[str]] = {}
    aliases: dict[str, str] = {}
    for attr in dir(module):
        if attr.startswith("_"):
            continue
        value = getattr(module, attr)
        if local(value):
            visit(value)
            if value.__qualname__ != attr:
                aliases[attr] = value.__qualname__
        elif type(value).__name__ == "builtin_function_or_method":
            functions[attr] = parse_doc(value.__doc__, attr)
        elif member_ref(value) is not None and attr != "value":  # `value`: a loop variable the package leaks
            constants[attr] = member_ref(value)
        elif inspect.isfunction(value) and value.__module__ == PACKAGE:
            functions[attr] = [
                {
                    "params": [{"name": "args", "type": "object", "default": None, "kind": "var_positional"}],
                    "returns": "object",
                }
            ]
    return {
        "version": str(module.__version__),
        "enums": enums,
        "classes": classes,
        "functions": functions,
        "constants": constants,
        "aliases": aliases,
    }


def _main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "dump":
        print("usage: trt_bindings.py dump PKG_DIR OUT.json", file=sys.stderr)
        return 2
    sys.path.insert(0, argv[1])
    import importlib

    module = importlib.import_module(PACKAGE)
    data = dump(module)
    Path(argv[2]).write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
