"""Where a defined DALI graph runs each operator, checked against DALI's own operator registry.

Defining a graph needs no GPU (only ``Pipeline.build()`` does), so a CPU-only machine can hold a GPU graph to the
rules a GPU would enforce when it runs: every operator placed on ``gpu`` or ``mixed`` has that implementation, no
CPU or mixed operator reads a GPU input, named (argument) inputs come from the CPU, the image output leaves on the
GPU, and nothing downstream of the images is left on the CPU. :func:`operator_counts` lets a test compare the GPU
graph's operators with the CPU graph's, so the numeric tests of the CPU graph cover what the GPU runs.

A test helper, not product code: it reads DALI internals that have no public API (a pipeline's ``_build_graph``
and ``_ops``, an operator instance's ``_op``, ``_inputs``/``_kwargs`` of its Python op) for DALI 2.4. ``DALI_READ``
says which versions it was written against; tests/test_gpu_graph.py fails (with the version found) when DALI moves.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from nvidia.dali import backend as _dali_backend

DALI_READ = ("2.4",)  # DALI major.minor versions whose internals this module reads


@dataclass(frozen=True)
class Node:
    """One operator of a defined graph."""

    name: str  # the instance name DALI gave it
    schema: str  # the operator's registry name, e.g. "Slice", "_conditional__Split"
    device: str  # "cpu" | "gpu" | "mixed"
    regular_inputs: tuple[str, ...]  # devices of its data inputs
    argument_inputs: tuple[tuple[str, str], ...]  # (argument name, device) of its tensor arguments


def _operators(pipe) -> list:
    # The topologically sorted operator instances reachable from the outputs: what build() would hand the
    # backend. Collecting them runs DALI's Python graph checks only; no CUDA call is made.
    if getattr(pipe, "_ops", None) is None:
        pipe._build_graph()
    return list(pipe._ops)


def _schema(op) -> str:
    # Python-side operators (the external source) carry no schema name; their class is named as the registry does.
    return getattr(op._op, "schema_name", None) or type(op._op).__name__


def _outputs(op) -> list:
    return op.outputs if isinstance(op.outputs, list) else [op.outputs]


def graph_nodes(pipe) -> list[Node]:
    """The operators of a defined (not built) pipeline, with their placement and their inputs' devices."""
    nodes = []
    for op in _operators(pipe):
        spec = op.spec
        n_regular = spec.NumRegularInput()
        regular = tuple(spec.InputDevice(i) for i in range(n_regular))
        arguments = tuple((spec.InputName(i), spec.InputDevice(i)) for i in range(n_regular, spec.NumInput()))
        nodes.append(Node(op.name, _schema(op), op._op.device, regular, arguments))
    return nodes


def operator_counts(pipe) -> Counter:
    """The multiset of operator schemas, whatever their placement."""
    return Counter(node.schema for node in graph_nodes(pipe))


# Operators that read an image only to describe it (its size, from the encoded header or the tensor's shape): what
# they output is metadata, used as CPU arguments (a resize's size, a slice's start), so it is not image work.
# GetProperty reads a sample's metadata (the shards graph: its source, "<tar>:<offset>:<key>.<ext>"), not its bytes.
_METADATA_OPERATORS = frozenset({"PeekImageShape", "Shapes", "GetProperty"})


def _is_data_source(op) -> bool:
    """Readers, and external sources that declare what they deliver (a layout such as "HWC", or a dtype): the
    drawn parameters (dali_pipes.dali_graph._parameters) come from an external source that declares neither and
    reach image operators only as per-sample arguments and scalars."""
    schema = _schema(op)
    if op.spec.NumRegularInput() != 0:
        return False
    if schema == "ExternalSource":
        # DALI 2.x keeps the declared layout and dtype there (tests/test_gpu_graph.py fails if that moves)
        return bool(getattr(op._op, "_layout", None)) or getattr(op._op, "_dtype", None) is not None
    return schema.startswith("readers__")


def _image_operators(pipe, image_output: int) -> set[str]:
    """Names of the operators that work on the image stream (output `image_output`), directly or transitively.

    Edges are matched by name: ``.gpu()`` makes a new node for the same edge, under the same name. The image
    stream starts at the first output of the data source (external source or reader) the image output comes from;
    the source's other outputs (indices, labels), the random draws, the drawn parameters (an external source
    without a layout, see _is_data_source) and image metadata (_METADATA_OPERATORS: an image's size read on the CPU) are not image data.
    """
    ops = _operators(pipe)
    producer = {edge.name: op for op in ops for edge in _outputs(op)}
    sources, stack, seen = [], [pipe._graph_outputs[image_output].name], set()
    while stack:  # walk back from the image output through data (not argument) inputs
        op = producer[stack.pop()]
        if id(op) in seen:
            continue
        seen.add(id(op))
        if _is_data_source(op):
            sources.append(op)
        stack.extend(edge.name for edge in op.inputs[:op.spec.NumRegularInput()])
    image_edges = {_outputs(op)[0].name for op in sources}
    names = set()
    for op in ops:  # topological order: producers come first
        if _schema(op) in _METADATA_OPERATORS:
            continue
        if any(edge.name in image_edges for edge in op.inputs[:op.spec.NumRegularInput()]):
            names.add(op.name)
            image_edges.update(edge.name for edge in _outputs(op))
    return names


def placement_errors(pipe, *, image_output: int = 0) -> list[str]:
    """Everything about a GPU graph's placement that would fail or fall back to the CPU on a GPU; [] when none."""
    gpu_ops = set(_dali_backend.RegisteredGPUOps(True))
    mixed_ops = set(_dali_backend.RegisteredMixedOps(True))
    cpu_ops = set(_dali_backend.RegisteredCPUOps(True))
    registry = {"gpu": gpu_ops, "mixed": mixed_ops, "cpu": cpu_ops}
    errors = []
    nodes = graph_nodes(pipe)
    for node in nodes:
        if node.schema not in registry.get(node.device, set()):
            errors.append(f"{node.name}: {node.schema} has no {node.device} implementation")
        if node.device in ("cpu", "mixed") and "gpu" in node.regular_inputs:
            errors.append(f"{node.name}: a {node.device} operator ({node.schema}) takes a GPU input")
        for arg, device in node.argument_inputs:
            if device != "cpu":
                errors.append(f"{node.name}: argument {arg!r} of {node.schema} is on the {device}; DALI takes "
                              "named arguments from the CPU only")
    output = pipe._graph_outputs[image_output]
    if output.device != "gpu":
        errors.append(f"the image output leaves the graph on the {output.device}, not the GPU")
    by_name = {node.name: node for node in nodes}
    for name in sorted(_image_operators(pipe, image_output)):
        if by_name[name].device == "cpu":
            errors.append(f"{name}: {by_name[name].schema} works on images on the CPU")
    return errors
