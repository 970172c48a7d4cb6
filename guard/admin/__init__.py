"""The admin pages: supervisors work the queue, policy owners tune policies, admins manage users.

``guard.admin.routes.admin_mount()`` is the Mount at /admin that create_app adds to its routes.
"""
