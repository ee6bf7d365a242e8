"""The demo's service under test: a tiny in-memory shop API (users, products, orders).

It implements what the example flows exercise, including an order that is confirmed
asynchronously and stock that goes down when an order is placed.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from aiohttp import web


class Shop:
    """In-memory state of the shop; one instance per demo."""

    def __init__(self, *, confirm_after: float = 0.2) -> None:
        self.users: dict[str, dict[str, Any]] = {}
        self.products: dict[str, dict[str, Any]] = {}
        self.orders: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._confirm_after = confirm_after
        self._tasks: set[asyncio.Task[None]] = set()
        self.requests = 0

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._count])
        r = app.router
        r.add_get("/healthz", self.health)
        r.add_post("/api/v1/users", self.create_user)
        r.add_delete("/api/v1/users/{id}", self.delete_user)
        r.add_get("/api/v1/products", self.list_products)
        r.add_post("/api/v1/products", self.create_product)
        r.add_get("/api/v1/products/{id}", self.get_product)
        r.add_put("/api/v1/products/{id}", self.update_product)
        r.add_delete("/api/v1/products/{id}", self.delete_product)
        r.add_get("/api/v1/orders", self.list_orders)
        r.add_post("/api/v1/orders", self.create_order)
        r.add_get("/api/v1/orders/{id}", self.get_order)
        r.add_delete("/api/v1/orders/{id}", self.delete_order)
        app.on_cleanup.append(self._cancel_tasks)
        return app

    @web.middleware
    async def _count(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests += 1
        response: web.StreamResponse = await handler(request)
        return response

    async def _cancel_tasks(self, _app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    async def _json(self, request: web.Request) -> dict[str, Any] | None:
        try:
            body = await request.json()
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def create_user(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        if not body or not body.get("email"):
            return web.json_response({"error": "email is required"}, status=400)
        user = {"id": self._new_id("user"), "name": body.get("name"), "email": body["email"]}
        self.users[user["id"]] = user
        return web.json_response(user, status=201)

    async def delete_user(self, request: web.Request) -> web.Response:
        found = self.users.pop(request.match_info["id"], None)
        return web.Response(status=204 if found else 404)

    async def list_products(self, request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", "50"))
        offset = int(request.query.get("offset", "0"))
        items = list(self.products.values())
        return web.json_response({"items": items[offset:offset + limit], "total": len(items)})

    async def create_product(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        if not body or not body.get("name"):
            return web.json_response({"error": "name is required"}, status=400)
        product = {"id": self._new_id("product"), "name": body["name"],
                   "price": body.get("price", 0), "currency": body.get("currency", "EUR"),
                   "inventory": body.get("inventory", 0)}
        self.products[product["id"]] = product
        return web.json_response(product, status=201)

    async def get_product(self, request: web.Request) -> web.Response:
        product = self.products.get(request.match_info["id"])
        if product is None:
            return web.json_response({"error": "no such product"}, status=404)
        return web.json_response(product)

    async def update_product(self, request: web.Request) -> web.Response:
        product = self.products.get(request.match_info["id"])
        body = await self._json(request)
        if product is None:
            return web.json_response({"error": "no such product"}, status=404)
        product.update({k: v for k, v in (body or {}).items() if k in ("name", "price",
                                                                        "inventory")})
        return web.json_response(product)

    async def delete_product(self, request: web.Request) -> web.Response:
        found = self.products.pop(request.match_info["id"], None)
        return web.Response(status=204 if found else 404)

    async def list_orders(self, request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", "50"))
        items = list(self.orders.values())
        return web.json_response({"items": items[:limit], "total": len(items)})

    async def create_order(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        items = (body or {}).get("items")
        if not items or not isinstance(items, list) or not (body or {}).get("user_id"):
            return web.json_response({"error": "an order needs a user_id and items"},
                                     status=400)
        total = 0.0
        for item in items:
            product = self.products.get(str(item.get("product_id")))
            quantity = int(item.get("quantity", 1))
            if product is None or product["inventory"] < quantity:
                return web.json_response({"error": "unknown product or out of stock"},
                                         status=409)
            product["inventory"] -= quantity
            total += product["price"] * quantity
        order = {"id": self._new_id("order"), "user_id": body["user_id"],  # type: ignore[index]
                 "items": items, "total": total, "status": "pending"}
        self.orders[order["id"]] = order
        task = asyncio.get_running_loop().create_task(self._confirm(order))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response(order, status=201)

    async def _confirm(self, order: dict[str, Any]) -> None:
        await asyncio.sleep(self._confirm_after)
        order["status"] = "confirmed"

    async def get_order(self, request: web.Request) -> web.Response:
        order = self.orders.get(request.match_info["id"])
        if order is None:
            return web.json_response({"error": "no such order"}, status=404)
        return web.json_response(order)

    async def delete_order(self, request: web.Request) -> web.Response:
        found = self.orders.pop(request.match_info["id"], None)
        return web.Response(status=204 if found else 404)
