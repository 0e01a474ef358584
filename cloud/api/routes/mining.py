"""Mining over the API: the console's Mine button.

``POST /datasets/{name}/mine`` (**operator**: it spends compute and queues
work for annotators) checks the request against the catalog at once — budget
larger than the pool (the answer says the pool size), unknown model version,
unknown pool, unknown strategy, a dataset with no samples — and answers 4xx
without queueing anything; otherwise it queues a ``mining`` job for
``citybrain worker`` and returns the task (``202``). When the job finishes,
its ``result.annotation_task_id`` names the annotation task whose items carry
the model's pre-label and the reason each sample was chosen (annotators see
them on ``GET /annotation-tasks/{id}/items``; operators and viewers see every
item on ``GET /mining/{task_id}``).
"""

from __future__ import annotations

from fastapi import APIRouter, Body, Path
from pydantic import BaseModel, ConfigDict, Field

from cloud.api.deps import CatalogDep, OperatorUser, SessionDep, SettingsDep, ViewerUser
from cloud.api.errors import ERROR_RESPONSES
from cloud.api.routes.tasks import TaskOut
from cloud.catalog.models import Task, TaskKind, TaskStatus
from cloud.errors import Conflict, NotFound

router = APIRouter(tags=["mining"], responses=ERROR_RESPONSES)

POOL = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"


class MineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    budget: int = Field(ge=1, le=100_000, description="samples to send to annotators")
    model: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+\-]*(@[A-Za-z0-9][A-Za-z0-9_.+\-]*)?$",
        description="algorithm@version or a version of the dataset's algorithm "
        "(default: newest published, else newest candidate)",
    )
    strategy: str = Field(default="auto", min_length=1, max_length=64, pattern=r"^[a-z_]+$")
    pools: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="pools of the dataset to mine (default main and field_hard)",
    )
    include_field: bool = Field(
        default=True, description="also mine the field hard cases of the model's algorithm"
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1)

    def pool_names(self) -> list[str] | None:
        import re

        from cloud.errors import InvalidInput

        if self.pools is None:
            return None
        for i, p in enumerate(self.pools):
            if not re.match(POOL, p):
                raise InvalidInput(f"bad pool name {p!r}", field=f"pools[{i}]")
        return list(self.pools)


@router.post("/datasets/{name}/mine", response_model=TaskOut, status_code=202)
def mine(
    user: OperatorUser,
    session: SessionDep,
    catalog: CatalogDep,
    settings: SettingsDep,
    name: str = Path(max_length=128),
    body: MineIn = Body(),
) -> TaskOut:
    """Queue a mining round: score the pool and the field hard cases, select
    ``budget`` samples, open an annotation task with pre-labels and reasons."""
    from cloud.flywheel._mine import prepare_mining
    from cloud.jobs import JobQueue

    session.close()
    pools = body.pool_names()
    plan = prepare_mining(
        catalog,
        name,
        model_version=body.model,
        budget=body.budget,
        strategy=body.strategy,
        pools=pools,
        include_field=body.include_field,
    )
    params = {
        "dataset": plan.dataset,
        "model": plan.model_key,
        "budget": plan.budget,
        "strategy": plan.strategy,
        "pools": pools,
        "include_field": body.include_field,
        "seed": body.seed,
        "created_by": user.name,
    }
    task = JobQueue(settings, sessions=catalog.sessions).submit(
        TaskKind.MINING,
        params,
        title=f"mine {plan.budget} of {plan.dataset}",
        dataset_id=plan.plan.dataset_id,
        created_by=user.name,
    )
    return TaskOut.model_validate(task)


class MinedItemOut(BaseModel):
    sample_id: str
    pool: str
    from_field: bool
    reason: str
    prelabel: str | None
    prelabel_score: float | None


class MiningResult(BaseModel):
    task_id: str
    status: TaskStatus
    progress: float
    message: str
    annotation_task_id: str | None
    model: str | None
    strategy: str
    budget: int
    selected: int
    from_field: int
    pool_size: int
    reason_kinds: dict[str, int]
    items: list[MinedItemOut]


@router.get("/mining/{task_id}", response_model=MiningResult)
def mining_result(
    _: ViewerUser, session: SessionDep, task_id: str = Path(max_length=64)
) -> MiningResult:
    """A mining task: its status and, once done, every selected sample with
    its pre-label and the reason it was chosen."""
    t = session.get(Task, task_id)
    if t is None or t.kind != TaskKind.MINING:
        raise NotFound(f"no mining task {task_id!r}", field="task_id")
    r = dict(t.result or {})
    if t.status == TaskStatus.SUCCEEDED and not r.get("annotation_task_id"):
        raise Conflict(f"mining task {task_id} finished without a result", field="task_id")
    p = dict(t.params or {})
    return MiningResult(
        task_id=t.id,
        status=t.status,
        progress=t.progress,
        message=t.message,
        annotation_task_id=r.get("annotation_task_id"),
        model=r.get("model", p.get("model")),
        strategy=str(r.get("strategy", p.get("strategy", "auto"))),
        budget=int(r.get("budget", p.get("budget", 0))),
        selected=int(r.get("selected", 0)),
        from_field=int(r.get("from_field", 0)),
        pool_size=int(r.get("pool_size", 0)),
        reason_kinds=dict(r.get("reason_kinds") or {}),
        items=[MinedItemOut.model_validate(i) for i in r.get("items") or []],
    )


__all__ = ["MineIn", "MiningResult", "router"]
