"""The training images of a run (`config.data`) and their DataLoader, whose data order depends only on (seed, epoch)."""

from .config import TrainConfig

RENDER_SCENES_PER_EPOCH = 10000  # what `render:train` draws per epoch without a count


def build_training_loader(config: TrainConfig, patch_size: int, accelerator):
    """Batches of randomly cropped and flipped `config.image_size` crops, `{"pixel_values": [B, 3, H, W]}`."""
    from ..data.images import DistillationImages, build_dataloader, make_transform

    if config.data.startswith("render:"):
        return build_rendered_loader(config, patch_size, accelerator.device)
    with accelerator.main_process_first():  # one process renders or caches the dataset, the others reuse it
        dataset = load_training_images(config)
    images = DistillationImages(
        dataset,
        make_transform(config.image_size, patch_size, train=True),
        seed=config.seed,
        image_column=config.image_column,
    )
    return build_dataloader(images, config.batch_size, seed=config.seed, num_workers=config.num_workers)


def build_rendered_loader(config: TrainConfig, patch_size: int, device):
    """`render:train[:<scenes per epoch>]` (default 10000): new procedural scenes every epoch, rendered whole batches
    at a time at `config.image_size` on `device` (compiled on CUDA, in the main process; CPU workers render on the
    CPU), with `pixel_values`, `depth`, `labels` and `valid`. Only the train split of `data.render_stream.SPLITS` may
    train."""
    from ..data.images import build_dataloader
    from ..data.render_stream import RenderedSceneDataset

    split, _, count = config.data.removeprefix("render:").partition(":")
    if split != "train" or not (count == "" or count.isdigit() and int(count) > 0):
        raise ValueError(f"data {config.data!r}: write render:train or render:train:<scenes per epoch>, e.g. "
                         "render:train:10000 (the search and test splits never train).")
    if config.image_size % patch_size:
        raise ValueError(f"image_size {config.image_size} is not a multiple of the patch size {patch_size}.")
    dataset = RenderedSceneDataset("train", int(count or RENDER_SCENES_PER_EPOCH), config.image_size,
                                   config.image_size, device=device, compiled=device.type == "cuda")
    workers = 0 if device.type == "cuda" else config.num_workers
    return build_dataloader(dataset, config.batch_size, seed=config.seed, num_workers=workers)


def load_training_images(config: TrainConfig):
    """The training images, checked to decode; errors name the source."""
    from ..data.images import load_images

    if config.data.startswith("scenes:"):
        raise ValueError(f"data {config.data!r}: procedural scenes come from the batched renderer now: use "
                         "render:train[:<scenes per epoch>].")
    dataset = load_images(config.data, image_column=config.image_column)
    try:
        dataset[0]
    except Exception as error:  # PIL raises several types for unreadable files
        raise ValueError(f"Could not read the images of {config.data}: {type(error).__name__}: {error}") from error
    return dataset
