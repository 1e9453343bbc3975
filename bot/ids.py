"""Every id Slack sends back to us, spelled once: the command, the shortcut, the buttons' action
ids and the modals' callback ids. The manifest (`manifest.yml`) must agree with the first two."""

from __future__ import annotations

COMMAND = "/delegate"
SHORTCUT_DELEGATE_THIS = "delegate_this"

# The work-order card (and the Cancel button on an active order's status message)
START_ACTION = "wo_start"
EDIT_ACTION = "wo_edit"
CANCEL_ACTION = "wo_cancel"

# App Home
NEW_ORDER_ACTION = "home_new_order"

# The review prompt
APPROVE_ACTION = "review_approve"
CHANGES_ACTION = "review_changes"
REJECT_ACTION = "review_reject"

# Exception messages
EXTEND_ACTION = "exception_extend"
EXTEND_CUSTOM_ACTION = "exception_extend_custom"
RETRY_ACTION = "exception_retry"
EXCEPTION_CANCEL_ACTION = "exception_cancel"

# Modals
INTAKE_CALLBACK = "intake_modal"
EDIT_CALLBACK = "edit_order_modal"
CHANGES_CALLBACK = "review_changes_modal"
EXTEND_CALLBACK = "extend_budget_modal"
