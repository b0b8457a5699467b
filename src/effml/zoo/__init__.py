"""Built-in models, each registered with its example input: `effml.zoo:lenet5` works as a CLI spec."""

from effml.zoo.cnn import lenet5, mlp, resnet, vgg
from effml.zoo.gpt import GPT, GPTConfig, tiny_gpt
from effml.zoo.registry import ZOO, ZooEntry, get, zoo_model

__all__ = ["ZOO", "ZooEntry", "GPT", "GPTConfig", "get", "lenet5", "mlp", "resnet", "tiny_gpt", "vgg", "zoo_model"]

# real data and training (issue 4): Fashion-MNIST / digits loaders, fit / evaluate
from effml.zoo.data import BatchLoader, DataBundle, load as load_data  # noqa: E402
from effml.zoo.fit import FitConfig, FitResult, evaluate, fit as fit_classifier  # noqa: E402 (effml.zoo.fit stays the module)

__all__ += ["BatchLoader", "DataBundle", "FitConfig", "FitResult", "evaluate", "fit_classifier", "load_data"]
