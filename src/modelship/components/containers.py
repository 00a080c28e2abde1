"""buildah as modelship runs it: how it is invoked, and removing a working container.

Shared by the package stage (which builds images) and the servers that run them.
"""

from __future__ import annotations

import subprocess

#: buildah on these machines: no overlay support in the kernel's view, no cgroups for runc
BUILDAH = ["buildah", "--storage-driver", "vfs"]


def remove_container(container: str) -> None:
    """Remove a buildah working container (its processes must be stopped first: see
    ``modelship.components.serving.server.served``, which tracks them by pid, since
    ``buildah run`` starts them in their own session and stopping buildah does not stop them)."""
    subprocess.run([*BUILDAH, "rm", container], capture_output=True, check=False)
