"""Every DALI graph the product builds, defined with GPU operators on this CPU-only machine.

Definition needs no CUDA (only ``build()`` does), so placement errors that would fail on every GPU show up here:
DALI's own argument checks raise while the graph is defined, and tests/placement.py holds the defined
graph to DALI's operator registry. The GPU graph must use exactly the CPU graph's operators, so the numeric and
lockstep tests of the CPU graph cover what the GPU runs.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.types as types
import pytest
import torch
from nvidia.dali import pipeline_def

from conftest import write_image_folder

from benchmarks.augment_throughput import DEFAULT_PRESETS
from dali_pipes import AugmentConfig, create_loader, resolve_augment
from dali_pipes import dali_graph
from dali_pipes.config import PAD_MODES, POLICIES, PRESETS
from placement import graph_nodes, operator_counts, placement_errors
from dali_pipes.shard_cli import pack


def recipes() -> list[tuple[str, AugmentConfig]]:
    """Every preset x policy x pad mode (pad mode only where the recipe pads)."""
    out = []
    for base in PRESETS:
        for policy in POLICIES:
            name = base if policy == "none" else f"{base}+{policy}"
            cfg = resolve_augment(name)
            modes = PAD_MODES if cfg.crop_padding > 0 else PAD_MODES[:1]
            out += [(f"{name}/{mode}", replace(cfg, pad_mode=mode)) for mode in modes]
    # The seed chapter's affine and blur, with every component drawn, and with the ranges that are left out.
    chapter = dict(affine_p=0.5, affine_degrees=15, affine_translate=0.1, affine_scale=(0.9, 1.1), affine_shear=10,
                   blur_p=0.5, blur_kernel=5, blur_sigma=(0.1, 2.0))
    out.append(("standard+affine+blur", resolve_augment({"preset": "standard+randaugment", **chapter})))
    fixed = dict(affine_p=1.0, affine_scale=(1.2, 1.2), blur_p=1.0, blur_sigma=(1.5, 1.5))
    out.append(("fixed-affine+blur", resolve_augment(fixed)))
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    write_image_folder(root, classes=("a", "b"), per_class=3, shape=(40, 48), ext="jpg")
    # the same images packed into tar shards (dataset="shards"), beside the folder
    pack(root, root / "shards", shard_size=8 << 10, seed=0, progress=False)
    return root


def loader_for(dataset: str, split: str, augment, folder, batch_size: int = 16):
    data_dir = {"folder": folder, "shards": folder / "shards"}.get(dataset, "unused")
    return create_loader(dataset, data_dir, split, batch_size=batch_size, backend="dali", device="cpu",
                         augment=augment, num_samples=40, num_threads=1)


def defined(loader, device: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return loader.define_graph(device)


def assert_gpu_graph_is_sound(loader) -> None:
    gpu, cpu = defined(loader, "gpu"), defined(loader, "cpu")
    assert placement_errors(gpu) == []
    assert operator_counts(gpu) == operator_counts(cpu)
    devices = {node.device for node in graph_nodes(gpu)}
    assert "gpu" in devices


@pytest.mark.parametrize("dataset", ["synthetic", "folder", "shards"])
@pytest.mark.parametrize("name, cfg", recipes(), ids=[r[0] for r in recipes()])
def test_every_training_graph_defines_on_the_gpu(dataset: str, name: str, cfg: AugmentConfig, folder) -> None:
    assert_gpu_graph_is_sound(loader_for(dataset, "train", cfg, folder))


@pytest.mark.parametrize("dataset", ["synthetic", "folder", "shards"])
def test_the_evaluation_graph_defines_on_the_gpu(dataset: str, folder) -> None:
    assert_gpu_graph_is_sound(loader_for(dataset, "val", "standard+autoaugment", folder))


# The folder crops beside what the presets resolve to ("resized" for the presets with a random crop, "centre" for
# none): the squash + pad-crop, the centre crop while training, and non-default crop parameters.
FOLDER_CROPS = {
    "pad": dict(crop="pad", crop_padding=4, flip_p=0.5),
    "centre+jitter": dict(crop="centre", crop_ratio=0.5, brightness=0.2, flip_p=0.5),
    "resized+randaugment": dict(crop="resized", rrc_scale=(0.25, 1.0), rrc_ratio=(0.5, 2.0), policy="randaugment"),
}


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("name", sorted(FOLDER_CROPS))
def test_every_folder_crop_defines_on_the_gpu(name: str, split: str, folder) -> None:
    assert_gpu_graph_is_sound(loader_for("folder", split, FOLDER_CROPS[name], folder))


@pytest.mark.parametrize("augment, split, decoder", [("standard", "train", "decoders__ImageRandomCrop"),
                                                     ("none", "train", "decoders__Image"),
                                                     ("standard", "val", "decoders__Image")])
@pytest.mark.parametrize("dataset", ["folder", "shards"])
def test_folder_crops_decode_on_the_device_and_size_on_the_cpu(augment: str, split: str, decoder: str,
                                                               dataset: str, folder) -> None:
    nodes = graph_nodes(defined(loader_for(dataset, split, augment, folder), "gpu"))
    assert [n.device for n in nodes if n.schema.startswith("decoders__")] == ["mixed"]
    assert [n.schema for n in nodes if n.schema.startswith("decoders__")] == [decoder]
    # the centre crop reads each image's size from its header on the CPU: resize and slice take CPU arguments
    peeks = [n.device for n in nodes if n.schema == "PeekImageShape"]
    assert peeks == ([] if decoder == "decoders__ImageRandomCrop" else ["cpu"])


@pytest.mark.parametrize("preset", DEFAULT_PRESETS)
@pytest.mark.parametrize("batch_size", [128, 1024])
def test_the_benchmark_rows_define_on_the_gpu(preset: str, batch_size: int) -> None:
    loader = create_loader("synthetic", split="train", batch_size=batch_size, backend="dali", device="cpu",
                           augment=preset, num_samples=64, num_threads=1)
    assert_gpu_graph_is_sound(loader)


def test_the_gpu_graph_reads_arrays_from_gpu_memory_and_decodes_files_on_the_device(folder) -> None:
    arrays = graph_nodes(defined(loader_for("synthetic", "train", "standard", folder), "gpu"))
    # one image source on the GPU; the drawn parameters (one external source, an operator per output) on the CPU
    sources = [n.device for n in arrays if n.schema == "ExternalSource"]
    assert sources.count("gpu") == 1 and set(sources) == {"cpu", "gpu"}
    files = graph_nodes(defined(loader_for("folder", "train", "standard", folder), "gpu"))
    assert [n.device for n in files if n.schema == "decoders__ImageRandomCrop"] == ["mixed"]
    assert [n.device for n in files if n.schema == "readers__File"] == ["cpu"]
    tars = graph_nodes(defined(loader_for("shards", "train", "standard", folder), "gpu"))
    assert [n.device for n in tars if n.schema == "decoders__ImageRandomCrop"] == ["mixed"]
    assert [n.device for n in tars if n.schema == "readers__Webdataset"] == ["cpu"]


# ---------------------------------------------------------------------------------- the checker can fail
@pipeline_def
def _misplaced(device: str):
    images = fn.external_source(source=lambda: None, batch=True, layout="HWC", dtype=types.UINT8)
    flipped = fn.flip(images, horizontal=1)  # left on the CPU in a graph meant for the GPU
    if device == "gpu":
        flipped = flipped.gpu()
    return fn.crop_mirror_normalize(flipped, dtype=types.FLOAT, output_layout="CHW")


def test_the_checker_reports_image_work_left_on_the_cpu() -> None:
    errors = placement_errors(_misplaced("gpu", batch_size=2, num_threads=1, device_id=0))
    assert len(errors) == 1 and "Flip works on images on the CPU" in errors[0]
    errors = placement_errors(_misplaced("cpu", batch_size=2, num_threads=1, device_id=None))
    assert any("image output leaves the graph on the cpu" in e for e in errors)


def test_a_gpu_value_as_a_named_argument_is_refused_where_the_graph_is_defined() -> None:
    # The mistake that broke colour jitter on every GPU: DALI refuses it when the graph is defined, which is
    # why defining every graph here is enough to catch it.
    @pipeline_def
    def gpu_named_argument():
        images = fn.external_source(source=lambda: None, batch=True, layout="HWC", dtype=types.UINT8).gpu()
        centre = fn.reductions.mean(images)
        return fn.brightness_contrast(images, contrast=1.1, contrast_center=centre)

    with pytest.raises(ValueError, match="Named arguments must be on CPU"):
        gpu_named_argument(batch_size=2, num_threads=1, device_id=0)


# ------------------------------------------------------------------------- contrast: arithmetic, same result
@pipeline_def
def _jitter(images: np.ndarray, cfg: AugmentConfig, reference: bool):
    batch = fn.external_source(source=lambda: images, batch=True, layout="HWC", dtype=types.UINT8)
    rng = np.random.default_rng(5)
    factors = {k: rng.uniform(0.6, 1.4, len(images)).astype(np.float32) for k in ("contrast", "brightness")}
    if not reference:  # the graph's inputs: the factors as the host combines them
        used = dali_graph._jitter_inputs({k: v for k, v in factors.items() if getattr(cfg, k) > 0})
        nodes = fn.external_source(source=lambda: tuple(used.values()), num_outputs=len(used), batch=True)
        return dali_graph._color_jitter(batch, cfg, dict(zip(used, nodes)))
    drawn = dict(zip(factors, fn.external_source(source=lambda: tuple(factors.values()), num_outputs=2, batch=True)))
    # DALI's own operator with the pivot as a CPU named argument: the formula the arithmetic must reproduce.
    mean = fn.reductions.mean(batch, axes=[0, 1])
    grey = dali_graph._GREY
    extra = {}
    if cfg.contrast > 0:
        extra["contrast"] = drawn["contrast"]
        extra["contrast_center"] = mean[0] * grey[0] + mean[1] * grey[1] + mean[2] * grey[2]
    if cfg.brightness > 0:
        extra["brightness"] = drawn["brightness"]
    return fn.brightness_contrast(batch, **extra)


@pytest.mark.parametrize("values", [dict(contrast=0.4), dict(brightness=0.4), dict(contrast=0.4, brightness=0.4)],
                         ids=["contrast", "brightness", "both"])
def test_contrast_and_brightness_as_arithmetic_equal_dalis_operator_up_to_rounding_ties(values: dict) -> None:
    rng = np.random.default_rng(3)
    # Mostly mid-grey with extremes, so clamping at 0 and 255 and rounding both happen.
    images = [np.clip(rng.normal(128, 90, (32, 32, 3)), 0, 255).astype(np.uint8) for _ in range(64)]
    cfg = AugmentConfig(**values)
    out = {}
    for reference in (True, False):
        pipe = _jitter(images, cfg, reference, batch_size=64, num_threads=1, device_id=None, seed=11)
        pipe.build()
        out[reference] = np.stack([np.asarray(t) for t in pipe.run()[0]])
    assert out[False].dtype == np.uint8
    # Equal but for float evaluation order on exact rounding ties: with both factors, 8 of 196,608 values here
    # were 1 level apart (DALI's kernel folds the two factors; the arithmetic applies them one after the other).
    diff = np.abs(out[True].astype(int) - out[False].astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-4, ((diff > 0).sum(), diff.max())
    assert not np.array_equal(out[False], np.stack(images))  # the factors were applied


@pipeline_def
def _sized_on_the_cpu():
    encoded = fn.external_source(source=lambda: None, batch=True, dtype=types.UINT8)
    size = fn.peek_image_shape(encoded, dtype=types.FLOAT)  # metadata: allowed on the CPU
    images = fn.decoders.image(encoded, device="mixed", output_type=types.RGB).cpu()
    images = fn.resize(images, size=fn.stack(size[0], size[1]))  # image work left on the CPU
    return fn.crop_mirror_normalize(images.gpu(), dtype=types.FLOAT, output_layout="CHW")


def test_reading_an_images_size_on_the_cpu_is_not_image_work_but_resizing_is() -> None:
    errors = placement_errors(_sized_on_the_cpu(batch_size=2, num_threads=1, device_id=0))
    assert any("Resize works on images on the CPU" in e for e in errors), errors
    assert not any("PeekImageShape" in e for e in errors), errors


# ------------------------------------------------------------------- host work: parameters drawn in bulk
# At most this many CPU operators in the GPU graph (issue 20; before the bulk draws: standard 41 of 63,
# weak+autoaugment 193 of 345). Each CPU operator is host work per sample per batch while the GPU waits.
CPU_OPERATOR_LIMITS = {"standard": 8, "weak+autoaugment": 96}


@pytest.mark.parametrize("preset", sorted(CPU_OPERATOR_LIMITS))
def test_the_gpu_graph_leaves_little_host_work(preset: str) -> None:
    loader = create_loader("synthetic", split="train", batch_size=1024, backend="dali", device="cpu",
                           augment=preset, num_samples=64, num_threads=1)
    nodes = graph_nodes(defined(loader, "gpu"))
    cpu = [n for n in nodes if n.device == "cpu"]
    assert len(cpu) <= CPU_OPERATOR_LIMITS[preset], sorted(n.schema for n in cpu)
    # no random operator is left: every draw comes from the host (dali_pipes.draws, dali_pipes.policy)
    assert not [n.schema for n in nodes if n.schema.startswith("random__")]
    # the recipe's own parameters are pure arguments: no scalar arithmetic on the CPU outside the policy's
    if "+" not in preset:
        assert {n.schema for n in cpu} == {"ExternalSource"}


def test_the_parameter_source_is_not_taken_for_image_data() -> None:
    # The checker tells image sources (a declared layout or dtype) from the drawn parameters' source; a
    # parameter source mistaken for images would flag every conditional split of a parameter as image work.
    @pipeline_def(enable_conditionals=True)
    def split_parameter():
        images = fn.external_source(source=lambda: None, batch=True, layout="HWC", dtype=types.UINT8, device="gpu")
        apply, factor = fn.external_source(source=lambda: None, num_outputs=2, batch=True)
        if apply:  # the factor is split on the CPU and read by GPU arithmetic as a regular input
            images = fn.cast(images * factor, dtype=types.UINT8)
        return fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW")

    nodes = graph_nodes(split_parameter(batch_size=2, num_threads=1, device_id=0))
    assert any(n.schema == "_conditional__Split" and n.device == "cpu" for n in nodes)
    assert placement_errors(split_parameter(batch_size=2, num_threads=1, device_id=0)) == []


# ------------------------------------------------------------------------------- streams and the JPEG decoder
from placement import _operators, _schema  # noqa: E402  (the defined graph's operators and arguments)

def test_the_gpu_image_source_copies_on_torchs_current_stream_at_each_feed(folder) -> None:
    loader = loader_for("synthetic", "train", "standard", folder)
    backend = loader._backend
    # a stand-in for the dataset in GPU memory: a stream fixed at definition would be read from CUDA right here
    backend._device_images = torch.zeros(1, dtype=torch.uint8)
    pipe = defined(loader, "gpu")
    graph_nodes(pipe)  # defines the graph's operators and its input callbacks
    (images,) = [g for g in pipe._input_callbacks if g.callback == backend._source]
    # None: DALI 2.4 reads torch.cuda.current_stream() when it feeds a torch tensor (types._get_default_stream_...)
    assert images._cuda_stream is None and images.instances[0]._op._device == "gpu"


@pytest.mark.parametrize("augment, split", [("standard", "train"), ("none", "val")])
def test_the_gpu_jpeg_decoder_gets_hw_decoder_load_on_purpose(augment: str, split: str, folder) -> None:
    def decoder_args(device: str, load: float | None = None) -> dict:
        loader = loader_for("folder", split, augment, folder)
        loader._backend.hw_decoder_load = load
        ops = [op for op in _operators(defined(loader, device)) if "decoders__" in _schema(op)]
        assert len(ops) == 1
        return ops[0]._op._init_args

    assert decoder_args("gpu")["hw_decoder_load"] == dali_graph.HW_DECODER_LOAD
    assert decoder_args("gpu", 0.0)["hw_decoder_load"] == 0.0  # the GPU parity test's other setting
    assert "hw_decoder_load" not in decoder_args("cpu")  # libjpeg-turbo: no hardware engine to share with


def test_the_placement_checker_reads_internals_of_the_installed_dali() -> None:
    # tests/placement.py reads DALI internals (no public API defines a graph's operator list): written against
    # DALI_READ; a DALI release that moves them fails here, naming the version, before the checks go blind.
    import nvidia.dali
    from nvidia.dali.pipeline import Pipeline

    import placement

    version = ".".join(nvidia.dali.__version__.split(".")[:2])
    assert version in placement.DALI_READ, f"DALI {nvidia.dali.__version__}: re-check tests/placement.py"
    assert callable(getattr(Pipeline, "_build_graph", None))


# ------------------------------------------------------------------------------ flips at the array source
def _mirror_operators(pipe) -> list[str]:
    """The graph's per-sample mirrors: fn.flip nodes and crop_mirror_normalize with a tensor argument (the graph
    passes it one only as `mirror`)."""
    return [n.schema for n in graph_nodes(pipe)
            if n.schema == "Flip" or (n.schema == "CropMirrorNormalize" and n.argument_inputs)]


@pytest.mark.parametrize("augment", ["weak", "standard", "weak+autoaugment", "strong"])
def test_array_graphs_take_their_flips_from_the_gather_and_file_graphs_keep_theirs(augment: str, folder) -> None:
    # A per-sample mirror in DALI's GPU operators cost ~5 us per 32x32 image on an H200 (2026-12-04): the array
    # source mirrors the flipped samples as it gathers them, and the graph has no mirror left.
    for device in ("gpu", "cpu"):
        assert _mirror_operators(defined(loader_for("synthetic", "train", augment, folder), device)) == []
        assert _mirror_operators(defined(loader_for("folder", "train", augment, folder), device)) != []


def test_the_device_gather_mirrors_as_the_host_gather_does(folder) -> None:
    # The GPU graph's source gathers from the dataset in device memory with the epoch's flips sent over once; the
    # same torch code runs here on CPU tensors and must give the host gather's images, mirrored where the draws say.
    from dali_pipes import draws

    loader = loader_for("synthetic", "train", "weak", folder, batch_size=8)
    backend = loader._backend
    backend._chunks = [np.arange(40)[::-1].copy(), np.array([3, 1, 4, 1, 5])]
    backend._epoch = 2
    info = [type("Info", (), {"iteration": k})() for k in range(2)]
    host = [backend._source(i) for i in info]
    backend._device_images = torch.from_numpy(backend.data.images.copy())
    backend._device_chunks = backend._plan_on_device(backend._chunks)
    device = [backend._source(i).numpy() for i in info]
    for chunk, h, d in zip(backend._chunks, host, device):
        np.testing.assert_array_equal(h, d)
        flipped = draws.flips(backend.cfg, backend.seed, 2, chunk)
        assert 0 < flipped.sum() < len(chunk) or len(chunk) < 8
        np.testing.assert_array_equal(h[flipped], backend.data.images[chunk][flipped][:, :, ::-1])
        np.testing.assert_array_equal(h[~flipped], backend.data.images[chunk][~flipped])
