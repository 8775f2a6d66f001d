"""hcbuild: role images (kernels, initramfs, root images) from profiles, kernels and elements."""

__version__ = "0.1.0"
