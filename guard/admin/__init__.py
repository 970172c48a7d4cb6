"""The admin pages: supervisors work the queue, policy owners tune policies, admins manage users.

``admin_mount(guard_app)`` is everything create_app needs: a Mount at /admin.
"""

from __future__ import annotations

from guard.admin.routes import Admin, admin_mount

__all__ = ["Admin", "admin_mount"]
