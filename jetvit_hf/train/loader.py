"""The training images of a run (`config.data`) and their DataLoader, whose data order depends only on (seed, epoch)."""

from .config import TrainConfig


def build_training_loader(config: TrainConfig, patch_size: int, accelerator):
    """Batches of randomly cropped and flipped `config.image_size` crops, `{"pixel_values": [B, 3, H, W]}`."""
    from ..data.images import DistillationImages, build_dataloader, make_transform

    with accelerator.main_process_first():  # one process renders or caches the dataset, the others reuse it
        dataset = load_training_images(config)
    images = DistillationImages(
        dataset,
        make_transform(config.image_size, patch_size, train=True),
        seed=config.seed,
        image_column=config.image_column,
    )
    return build_dataloader(images, config.batch_size, seed=config.seed, num_workers=config.num_workers)


def load_training_images(config: TrainConfig):
    """The training images, checked to decode; errors name the source."""
    from ..data.images import load_images

    if config.data.startswith("scenes:"):
        from ..data.scenes import scene_dataset

        count = config.data.removeprefix("scenes:")
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"data {config.data!r}: write scenes:<number of scenes>, e.g. scenes:1000.")
        dataset = scene_dataset(int(count), config.image_size, config.image_size, seed=config.seed)
        return load_images(dataset, image_column=config.image_column or "image")
    dataset = load_images(config.data, image_column=config.image_column)
    try:
        dataset[0]
    except Exception as error:  # PIL raises several types for unreadable files
        raise ValueError(f"Could not read the images of {config.data}: {type(error).__name__}: {error}") from error
    return dataset
