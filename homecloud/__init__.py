"""homecloud: the cloud's rooms beside the boot path (``bootserver``) and the image builder
(``builder``).  ``homecloud.core`` is the shared core: it imports nothing else of ours and only the
standard library, so node agents can carry it into images."""
