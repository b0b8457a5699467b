"""Built-in models, each registered with its example input: `effml.zoo:lenet5` works as a CLI spec."""

from effml.zoo.cnn import lenet5, mlp, resnet, vgg
from effml.zoo.gpt import GPT, GPTConfig, tiny_gpt
from effml.zoo.registry import ZOO, ZooEntry, get, zoo_model

__all__ = ["ZOO", "ZooEntry", "GPT", "GPTConfig", "get", "lenet5", "mlp", "resnet", "tiny_gpt", "vgg", "zoo_model"]

# real data and training: Fashion-MNIST / digits loaders, train_classifier / evaluate
from effml.zoo.data import BatchLoader, DataBundle, load as load_data  # noqa: E402
from effml.zoo.training import TrainLoopConfig, TrainLoopResult, evaluate, train_classifier  # noqa: E402

__all__ += ["BatchLoader", "DataBundle", "TrainLoopConfig", "TrainLoopResult", "evaluate", "load_data",
            "train_classifier"]
