"""Reply Guard: scores a chatbot's draft reply against the customer's issue, then applies the policy."""

__version__ = "0.1.0"
