"""The pictures a run draws: their fixed inputs (test images and their labels, the manifold's z grid, the prior
samples, the interpolation's pairs) on the run's device, built once and only for the pictures that are on, and
their drawing into the results folder."""
import mnist_data
import results_folder
from report import RunError, out_of_memory


class Pictures:
    """The pictures' fixed inputs on the run's device, and their drawing into the results folder. Only the
    pictures that are on are built. A conditional model is given the test images' true labels."""

    def __init__(self, plan, data, folder):
        import torch

        import plot_utils
        s, test = plan.settings, data.test
        self.folder, self.grids, self.add_noise, self.device = folder, plan.grids, s.add_noise, plan.device
        self.conditional = s.conditional
        n_prr = self.grids["PRR"].count
        self.x_prr, self.x_prr_hat, self.y_prr = test.x[:n_prr], test.x_hat[:n_prr], test.y[:n_prr]
        if s.PMLR:
            self.x_pmlr_hat, self.y_pmlr = test.x_hat[:s.PMLR_n_samples], test.y[:s.PMLR_n_samples]
            z_grid = plot_utils.manifold_z(s.PMLR_n_img_x, s.PMLR_n_img_y, s.PMLR_z_range, s.PMLR_grid)
            self.z_grid, self.limit = torch.from_numpy(z_grid).to(self.device), plot_utils.scatter_limit(z_grid)
        if s.PRS:  # the same prior samples every epoch, from their own generator: training's stream is untouched
            generator = torch.Generator().manual_seed(s.seed)
            self.z_prs = torch.randn(self.grids["PRS"].count, s.dim_z, generator=generator).to(self.device)
            self.y_prs = torch.arange(self.grids["PRS"].count, device=self.device) % mnist_data.NUM_LABELS
        if s.PARR:  # the first test images, as PRR's
            n = s.PARR_n_img_y
            self.x_parr, self.x_parr_hat, self.y_parr = test.x[:n], test.x_hat[:n], test.y[:n]
        if s.PIR:  # pairs of test images drawn once from --seed by their own generator, as PRS's samples
            pairs = torch.randperm(len(test.x), generator=torch.Generator().manual_seed(s.seed))[:2 * s.PIR_n_img_y]
            a, b = pairs[0::2].to(self.device), pairs[1::2].to(self.device)
            self.pir_ends = test.x[a], test.x[b]
            self.pir_inputs = test.x_hat[a], test.x_hat[b]
            self.pir_labels = test.y[a], test.y[b]

    def write(self, name, render, what):
        """Write one picture; running out of memory for it is one line that names it."""
        try:
            self.folder.write(name, render)
        except (MemoryError, RuntimeError) as e:
            if not out_of_memory(e):
                raise
            raise RunError(f"out of memory drawing {name} (try a smaller --{what}_n_img_x, --{what}_n_img_y or "
                           f"--{what}_resize_factor)") from None

    def grid(self, grid, name, images, stretch=False):
        """Write one grid's images as the output name."""
        import plot_utils
        self.write(name, lambda f: plot_utils.save_grid(f, images.cpu(), grid.n_x, grid.n_y, grid.factor, stretch),
                   grid.name)

    def save_inputs(self):
        """input.jpg, and input_noise.jpg (stretched min..max to 0..255, as the original drew it)."""
        prr = self.grids["PRR"]
        if prr.on:
            self.grid(prr, results_folder.INPUT_JPG, self.x_prr)
            if self.add_noise:
                self.grid(prr, results_folder.INPUT_NOISE_JPG, self.x_prr_hat, stretch=True)

    def labels(self, y):
        """The labels= a model is given: y for a conditional model, None for a plain one."""
        return y if self.conditional else None

    def save(self, model, epoch, between=lambda: None):
        """The epoch's PRR, PMLR, PRS, PARR and PIR pictures, calling between() after each; their sampling
        leaves training's random stream alone."""
        import torch

        import plot_utils
        g, name, labels = self.grids, results_folder.picture_name, self.labels
        model.eval()  # no dropout in a picture, also when a resumed model only draws
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            if g["PRR"].on:
                self.grid(g["PRR"], name("PRR", epoch), model.reconstruct(self.x_prr_hat, labels(self.y_prr)))
                between()
            if g["PMLR"].on:
                for digit in range(mnist_data.NUM_LABELS) if self.conditional else [None]:  # a manifold per digit
                    self.grid(g["PMLR"], name("PMLR", epoch, digit), model.decode(self.z_grid, digit))
                    between()
                z = model.encode(self.x_pmlr_hat, labels(self.y_pmlr))[0].cpu()
                self.write(name("PMLR_map", epoch),
                           lambda f: plot_utils.save_scatter(f, z, self.y_pmlr.cpu(), self.limit), "PMLR")
                between()
            if g["PRS"].on:
                self.grid(g["PRS"], name("PRS", epoch), model.decode(self.z_prs, labels(self.y_prs)))
                between()
            if g["PARR"].on:  # each row: the image, then its z (the encoder's mean, given its label) as 0 to 9
                z = model.encode(self.x_parr_hat, self.y_parr)[0]
                digits = torch.arange(mnist_data.NUM_LABELS, device=self.device).repeat(len(z))
                styled = model.decode(z.repeat_interleave(mnist_data.NUM_LABELS, 0), digits)
                self.grid(g["PARR"], name("PARR", epoch),
                          torch.cat((self.x_parr[:, None], styled.reshape(len(z), mnist_data.NUM_LABELS, -1)), 1))
                between()
            if g["PIR"].on:  # each row: the first image, the decoded line between the two, the second image
                path = model.interpolate(*self.pir_inputs, g["PIR"].n_x - 2,
                                         self.pir_labels if self.conditional else None)
                first, second = self.pir_ends
                self.grid(g["PIR"], name("PIR", epoch), torch.cat((first[:, None], path, second[:, None]), 1))
                between()
