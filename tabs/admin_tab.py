"""The admin tab: the audit log (filters, CSV export) and the user list.

Hidden unless the signed-in user is an admin, and every handler checks the role again on the
server (``UiAuth.audited`` with the admin permissions): hiding is convenience, not security.
"""

from __future__ import annotations

import tempfile
from datetime import timedelta
from typing import Any

import gradio as gr

from auth.audit import COLUMNS, OUTCOMES, AuditFilter, AuditLog
from auth.db import utcnow
from auth.service import Permission
from inference.runtime import Runtime
from tabs.common import UiAuth

# What an admin scans first (who, what, outcome) on the left; long hashes and ids to the right.
_FIRST = ("ts", "username", "role", "action", "model_id", "model_version", "outcome", "result", "latency_ms")
_SHOWN = [*_FIRST, *(c for c in COLUMNS if c not in (*_FIRST, "id", "detail")), "detail"]


def build_admin_tab(runtime: Runtime, ui: UiAuth) -> gr.Tab:
    audit = ui.auth.audit
    model_ids = ["(any)"] + [s.id for s in runtime.registry]

    def _filter(user: str, model: str, outcome: str, hours: float, limit: float) -> AuditFilter:
        since = None if not hours else utcnow() - timedelta(hours=float(hours))
        return AuditFilter(
            username=user.strip() or None,
            model_id=None if model == "(any)" else model,
            outcome=None if outcome == "(any)" else outcome,
            since=since,
            limit=int(limit or 200),
        )

    def search(user: str, model: str, outcome: str, hours: float, limit: float, request: gr.Request) -> Any:
        with ui.audited(request, "audit_view", permission=Permission.VIEW_AUDIT, rate_limited=False):
            rows = audit.query(_filter(user, model, outcome, hours, limit))
        return [[r.get(c) for c in _SHOWN] for r in rows]

    def export(user: str, model: str, outcome: str, hours: float, limit: float, request: gr.Request) -> str:
        with ui.audited(request, "audit_export", permission=Permission.VIEW_AUDIT, rate_limited=False):
            rows = audit.query(_filter(user, model, outcome, hours, limit))
        # Gradio moves the file into its cache (cleaned by delete_cache) and serves it to this admin.
        with tempfile.NamedTemporaryFile("w", suffix=".csv", prefix="doctorai-audit-", delete=False) as fh:
            fh.write(AuditLog.to_csv(rows))
        return fh.name

    def users(request: gr.Request) -> Any:
        with ui.audited(request, "users_view", permission=Permission.MANAGE_USERS, rate_limited=False):
            listed = ui.auth.service.list_users()
        return [
            [
                u.username,
                u.role,
                u.active,
                u.sso_provider or "password",
                str(u.created_at)[:19],
                str(u.last_login_at or "")[:19],
            ]
            for u in listed
        ]

    with gr.Tab("Admin", id="admin", elem_id="tab-admin", visible=False) as tab:
        gr.Markdown(
            "### Audit log\nEvery analysis, chat question, login and account change, newest first. Inputs are "
            "recorded by SHA-256 only. Also available as `GET /api/audit` (admins)."
        )
        with gr.Row():
            user = gr.Textbox(label="User", placeholder="any")
            model = gr.Dropdown(model_ids, value="(any)", label="Model")
            outcome = gr.Dropdown(["(any)", *OUTCOMES], value="(any)", label="Outcome")
            hours = gr.Number(value=24, label="Last hours (0 = all)", minimum=0)
            limit = gr.Number(value=200, label="Rows", minimum=1, maximum=10_000, precision=0)
        with gr.Row():
            go = gr.Button("Search", variant="primary", elem_id="audit-search")
            csv_btn = gr.Button("Export CSV", elem_id="audit-export")
        table = gr.Dataframe(headers=_SHOWN, interactive=False, wrap=True, elem_id="audit-table")
        csv_file = gr.File(label="CSV export", interactive=False)
        gr.Markdown("### Users\nManage with `python -m auth.users` or `/api/users`.")
        user_table = gr.Dataframe(
            headers=["username", "role", "active", "login", "created", "last login"], interactive=False
        )
        refresh = gr.Button("Refresh users")
        inputs = [user, model, outcome, hours, limit]
        go.click(search, inputs=inputs, outputs=table, api_visibility="private")
        csv_btn.click(export, inputs=inputs, outputs=csv_file, api_visibility="private")
        refresh.click(users, outputs=user_table, api_visibility="private")
        tab.select(search, inputs=inputs, outputs=table, api_visibility="private")
        tab.select(users, outputs=user_table, api_visibility="private")
    return tab
