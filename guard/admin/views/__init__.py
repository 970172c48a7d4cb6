"""The admin pages by family: one module each, every handler a method over ``admin.base.Pages``."""
