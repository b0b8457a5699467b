"""Built-in models, each registered with its example input: `effml.zoo:lenet5` works as a CLI spec."""

from effml.zoo.cnn import lenet5, mlp, resnet, vgg
from effml.zoo.gpt import GPT, GPTConfig, tiny_gpt
from effml.zoo.registry import ZOO, ZooEntry, get, zoo_model

__all__ = ["ZOO", "ZooEntry", "GPT", "GPTConfig", "get", "lenet5", "mlp", "resnet", "tiny_gpt", "vgg", "zoo_model"]

# real data: Fashion-MNIST / digits loaders (training them: effml.train.classifier, a layer above the zoo)
from effml.zoo.data import BatchLoader, DataBundle, load as load_data  # noqa: E402

__all__ += ["BatchLoader", "DataBundle", "load_data"]
