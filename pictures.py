"""The pictures a run draws: their fixed inputs (test images and their labels, the manifold's z grid, the prior
samples, the interpolation's pairs) on the run's device, built once and only for the pictures that are on, and
their drawing into the results folder."""
import mnist_data
import results_folder
from config import DIM_IMG
from report import RunError, out_of_memory


class Pictures:
    """The pictures' fixed inputs on the run's device, and their drawing into the results folder (folder, set
    once the run holds it). Only the pictures that are on are built. A conditional model is given the test
    images' true labels."""

    def __init__(self, plan, data, folder=None):
        import torch

        import plot_utils
        s, test = plan.settings, data.test
        self.folder, self.grids, self.add_noise, self.device = folder, plan.grids, s.add_noise, plan.device
        self.conditional = s.conditional
        # memory an image takes while decoded: its pixels a few times over and the decoder's hidden units
        self.bytes_per_image = 4 * (3 * DIM_IMG + 4 * plan.config.n_hidden)
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

    def grid(self, grid, name, rows_of, stretch=None):
        """Write one grid as the output name, drawn a few rows at a time into its 8-bit canvas: rows_of(r0, r1)
        gives the images of rows r0 to r1 (row-major, on any device), so memory holds the canvas and one chunk.
        stretch: the (low, high) pixel values drawn as black and white (default 0 and 1)."""
        import plot_utils
        step = plot_utils.rows_per_chunk(grid.n_x, grid.factor, self.bytes_per_image)

        def render(f):
            canvas = plot_utils.Canvas(grid.n_x, grid.n_y, grid.factor)
            for row in range(0, grid.n_y, step):
                canvas.paste(row, rows_of(row, min(row + step, grid.n_y)).float().cpu().numpy(), *(stretch or ()))
            canvas.save(f)
        self.write(name, render, grid.name)

    def save_inputs(self):
        """input.jpg, and input_noise.jpg (stretched min..max to 0..255, as the original drew it)."""
        prr = self.grids["PRR"]
        if prr.on:
            n = prr.n_x
            self.grid(prr, results_folder.INPUT_JPG, lambda r0, r1: self.x_prr[r0 * n:r1 * n])
            if self.add_noise:
                low, high = self.x_prr_hat.min().item(), self.x_prr_hat.max().item()
                self.grid(prr, results_folder.INPUT_NOISE_JPG, lambda r0, r1: self.x_prr_hat[r0 * n:r1 * n],
                          stretch=(low, high))

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
        cells = lambda grid, r0, r1: slice(r0 * grid.n_x, r1 * grid.n_x)  # noqa: E731  (a grid's rows, row-major)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            if g["PRR"].on:
                self.grid(g["PRR"], name("PRR", epoch), lambda r0, r1: model.reconstruct(
                    self.x_prr_hat[cells(g["PRR"], r0, r1)], labels(self.y_prr[cells(g["PRR"], r0, r1)])))
                between()
            if g["PMLR"].on:
                for digit in range(mnist_data.NUM_LABELS) if self.conditional else [None]:  # a manifold per digit
                    self.grid(g["PMLR"], name("PMLR", epoch, digit),
                              lambda r0, r1, digit=digit: model.decode(self.z_grid[cells(g["PMLR"], r0, r1)], digit))
                    between()
                z = model.encode(self.x_pmlr_hat, labels(self.y_pmlr))[0].cpu()
                self.write(name("PMLR_map", epoch),
                           lambda f: plot_utils.save_scatter(f, z, self.y_pmlr.cpu(), self.limit), "PMLR")
                between()
            if g["PRS"].on:
                self.grid(g["PRS"], name("PRS", epoch), lambda r0, r1: model.decode(
                    self.z_prs[cells(g["PRS"], r0, r1)], labels(self.y_prs[cells(g["PRS"], r0, r1)])))
                between()
            if g["PARR"].on:  # each row: the image, then its z (the encoder's mean, given its label) as 0 to 9
                self.grid(g["PARR"], name("PARR", epoch), lambda r0, r1: self.analogies(model, r0, r1))
                between()
            if g["PIR"].on:  # each row: the first image, the decoded line between the two, the second image
                self.grid(g["PIR"], name("PIR", epoch), lambda r0, r1: self.interpolations(model, r0, r1))
                between()

    def analogies(self, model, r0, r1):
        """PARR's rows r0 to r1: each test image, then its z decoded as the digits 0 to 9."""
        import torch
        z = model.encode(self.x_parr_hat[r0:r1], self.y_parr[r0:r1])[0]
        digits = torch.arange(mnist_data.NUM_LABELS, device=self.device).repeat(len(z))
        styled = model.decode(z.repeat_interleave(mnist_data.NUM_LABELS, 0), digits)
        return torch.cat((self.x_parr[r0:r1, None], styled.reshape(len(z), mnist_data.NUM_LABELS, -1)), 1)

    def interpolations(self, model, r0, r1):
        """PIR's rows r0 to r1: the first image of each pair, the decoded line between the two, the second."""
        import torch
        first, second = (x[r0:r1] for x in self.pir_ends)
        labels = tuple(y[r0:r1] for y in self.pir_labels) if self.conditional else None
        path = model.interpolate(*(x[r0:r1] for x in self.pir_inputs), self.grids["PIR"].n_x - 2, labels)
        return torch.cat((first[:, None], path, second[:, None]), 1)
