"""The model's configuration, written once (as nanoGPT's GPTConfig): the widths of its layers, its parameter count,
the memory it takes, and its record in checkpoint.pt's model_args. No torch here: the command line and the
checkpoint's reader size a model before any is built."""
import dataclasses
import math

from mnist_data import IMAGE_SIZE, NUM_LABELS

DIM_IMG = IMAGE_SIZE * IMAGE_SIZE
KEEP_PROB = 0.9  # the original's dropout keep probability while training
KEEP_PROB_MIN = 1e-3  # below this, dropout's 1 / keep_prob scaling overflows the training (1e-40 did)
MAX_WIDTH = 2**31 - 1  # the most units dim_z or n_hidden may name (torch's 32-bit sizes)
EVAL_ROWS = 1000  # images per batch of the test -ELBO, the least a run's activations are sized for
IW_BATCH = 100  # images per batch of the importance-weighted bound
IW_ROWS = 16384  # decoder rows per chunk of its samples


def whole(value):
    """Whether value is an int (a bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """The VAE's arguments, checked when made: VAEConfig(dim_z, n_hidden, keep_prob, conditional); ValueError for
    a value the model cannot take. conditional: the author's CVAE, the one-hot label joins the encoder's input (its
    first hidden layer widened by the label's 10 units) and the decoder's."""
    dim_z: int = 20
    n_hidden: int = 500
    keep_prob: float = KEEP_PROB
    conditional: bool = False

    def __post_init__(self):
        for name in ("dim_z", "n_hidden"):
            value = getattr(self, name)
            if not (whole(value) and 1 <= value <= MAX_WIDTH):
                raise ValueError(f"expected {name} a whole number from 1 to {MAX_WIDTH}, got {value!r}")
        keep_prob = self.keep_prob
        if not ((whole(keep_prob) or isinstance(keep_prob, float)) and KEEP_PROB_MIN <= keep_prob <= 1):
            raise ValueError(f"expected keep_prob from {KEEP_PROB_MIN} to 1, got {keep_prob!r}")
        if not isinstance(self.conditional, bool):
            raise ValueError(f"expected conditional True or False, got {self.conditional!r}")
        object.__setattr__(self, "keep_prob", float(keep_prob))

    @classmethod
    def from_saved(cls, saved):
        """The config of a checkpoint's model_args; a file without keep_prob or conditional holds the original's
        dropout and a plain model. ValueError for anything else."""
        if not (isinstance(saved, dict) and set(saved) <= {f.name for f in dataclasses.fields(cls)}
                and {"dim_z", "n_hidden"} <= set(saved)):
            raise ValueError(f"invalid model arguments {saved!r}")
        return cls(**saved)

    def as_saved(self):
        """The model_args a checkpoint records: VAEConfig.from_saved(config.as_saved()) == config."""
        return dataclasses.asdict(self)

    @property
    def labels(self):
        """The label's units at each network's input: 10 for a conditional model, else 0."""
        return NUM_LABELS if self.conditional else 0

    def encoder_widths(self):
        """The encoder's layer widths, input to output: image (and label), two hidden layers, mu and sigma."""
        return (DIM_IMG + self.labels, self.n_hidden + self.labels, self.n_hidden, 2 * self.dim_z)

    def decoder_widths(self):
        """The decoder's layer widths, input to output: z (and label), two hidden layers, the pixels' logits."""
        return (self.dim_z + self.labels, self.n_hidden, self.n_hidden, DIM_IMG)

    def shapes(self):
        """Each parameter's name and shape, in the model's order (every third module of an MLP is a Linear)."""
        shapes = {}
        for net, widths in (("encoder", self.encoder_widths()), ("decoder", self.decoder_widths())):
            for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
                shapes[f"{net}.net.{3 * i}.weight"] = (n_out, n_in)
                shapes[f"{net}.net.{3 * i}.bias"] = (n_out,)
        return shapes

    def parameter_count(self):
        """The model's weights and biases."""
        return sum(math.prod(shape) for shape in self.shapes().values())

    def model_bytes(self):
        """Memory the model's float32 weights take."""
        return 4 * self.parameter_count()

    def training_bytes(self, rows):
        """Memory training takes, about: weights, gradients and Adam's two moments (16 bytes a parameter), plus
        the activations of a batch of rows (at least an evaluation batch of EVAL_ROWS images)."""
        return 16 * self.parameter_count() + 4 * max(rows, EVAL_ROWS) * (8 * self.n_hidden + 4 * DIM_IMG)
