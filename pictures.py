"""The pictures a run draws: their fixed inputs (test images, the manifold's z grid, the prior samples) on the
run's device, built once and only for the pictures that are on, and their drawing into the results folder."""
import safety
from safety import RunError


class Pictures:
    """The pictures' fixed inputs (test images, manifold grid, prior samples) on the run's device, and their
    drawing into the results folder. Only the pictures that are on are built."""

    def __init__(self, plan, data, folder):
        import torch

        import plot_utils
        s, test = plan.settings, data.test
        self.folder, self.grids, self.add_noise, self.device = folder, plan.grids, s.add_noise, plan.device
        n_prr = self.grids["PRR"].count
        self.x_prr, self.x_prr_hat = test.x[:n_prr], test.x_hat[:n_prr]
        if s.PMLR:
            self.x_pmlr_hat, self.y_pmlr = test.x_hat[:s.PMLR_n_samples], test.y[:s.PMLR_n_samples]
            z_grid = plot_utils.manifold_z(s.PMLR_n_img_x, s.PMLR_n_img_y, s.PMLR_z_range, s.PMLR_grid)
            self.z_grid, self.limit = torch.from_numpy(z_grid).to(self.device), plot_utils.scatter_limit(z_grid)
        if s.PRS:  # the same prior samples every epoch, from their own generator: training's stream is untouched
            generator = torch.Generator().manual_seed(s.seed)
            self.z_prs = torch.randn(self.grids["PRS"].count, s.dim_z, generator=generator).to(self.device)

    def write(self, name, render, what):
        """Write one picture; running out of memory for it is one line that names it."""
        try:
            self.folder.write(name, render)
        except (MemoryError, RuntimeError) as e:
            if not safety.out_of_memory(e):
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
            self.grid(prr, safety.INPUT_JPG, self.x_prr)
            if self.add_noise:
                self.grid(prr, safety.INPUT_NOISE_JPG, self.x_prr_hat, stretch=True)

    def save(self, model, epoch, between=lambda: None):
        """The epoch's PRR, PMLR and PRS pictures, calling between() after each; their sampling leaves
        training's random stream alone."""
        import torch

        import plot_utils
        prr, pmlr, prs = self.grids["PRR"], self.grids["PMLR"], self.grids["PRS"]
        name = safety.picture_name
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            if prr.on:
                self.grid(prr, name("PRR", epoch), model.reconstruct(self.x_prr_hat))
                between()
            if pmlr.on:
                self.grid(pmlr, name("PMLR", epoch), model.decode(self.z_grid))
                between()
                z = model.encode(self.x_pmlr_hat)[0].cpu()
                self.write(name("PMLR_map", epoch),
                           lambda f: plot_utils.save_scatter(f, z, self.y_pmlr.cpu(), self.limit), "PMLR")
                between()
            if prs.on:
                self.grid(prs, name("PRS", epoch), model.decode(self.z_prs))
                between()
