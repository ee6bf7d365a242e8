"""Outbound IO to the external systems, one module per system (DESIGN.md section 6).

``gitea`` posts commit statuses; ``argocd`` drives test environments through Argo CD. Each
keeps its pure mapping beside its IO; the registry is a literal dict (no discovery).
"""

from __future__ import annotations
