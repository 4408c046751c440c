"""What integrators do all day, for locust: ingest batches, list contacts by keyset pages, read one contact.

Run by loadtest/run.py against `email-engine up`; EE_KEY is a tenant key, EE_TENANT its id, EE_TAG the tag put
on every contact ingested (the run counts them afterwards), EE_ACCEPTED the file the accepted count goes to.
"""

from __future__ import annotations

import itertools
import os
import random
import uuid

from locust import FastHttpUser, between, events, task

AUTH = {"Authorization": f"Bearer {os.environ['EE_KEY']}"}
TENANT = int(os.environ.get("EE_TENANT", "1"))
TAG = os.environ.get("EE_TAG", "loadtest")
BATCH = 100
accepted_total = [0]


class Integrator(FastHttpUser):
    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        self.ids: list[int] = []
        self.run = uuid.uuid4().hex[:10]
        self.serial = itertools.count()

    @task(1)
    def ingest(self) -> None:
        contacts = [{"tenant_id": TENANT, "email": f"lt-{self.run}-{next(self.serial)}@example.com",
                     "first_name": "Load", "language": random.choice(["fr", "en", "de"]), "tags": [TAG]}
                    for _ in range(BATCH)]
        with self.client.post("/api/v2/contacts/ingest", json={"contacts": contacts}, name="ingest 100",
                              headers=AUTH, catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}")
                return
            results = r.json()["results"]
            created = [x["id"] for x in results if x["outcome"] == "created"]
            accepted_total[0] += len(created)
            self.ids = (self.ids + created)[-1000:]

    @task(3)
    def list_page(self) -> None:
        self.client.get(f"/api/v2/contacts/{TENANT}?limit=100", name="list contacts", headers=AUTH)

    @task(4)
    def read_one(self) -> None:
        if self.ids:
            self.client.get(f"/api/v2/contacts/{TENANT}/{random.choice(self.ids)}", name="read contact", headers=AUTH)


@events.test_stop.add_listener
def _write_accepted(**_) -> None:
    if path := os.environ.get("EE_ACCEPTED"):
        with open(path, "w") as f:
            f.write(str(accepted_total[0]))
