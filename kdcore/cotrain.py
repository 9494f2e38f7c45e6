"""Train a report's runs before its notebooks execute, in groups that share each batch's teacher forward.

The calls below mirror the notebooks' `ctx.run` cells (benchmarks/parallel_report.py runs the same calls one
per process on a GPU). `co_train` executes them with kdcore.pending collecting instead of training, for every
chosen notebook, with one data bundle and one teacher per owning notebook (01 for 01-05), then co-trains each
seed's runs (kdcore.group) and stores them. The notebooks then find every run in the store; a run the mirror
misses is trained by its notebook as before, only alone.
"""
from __future__ import annotations

import linecache

from . import experiments as ex
from . import pending, profiles, provenance

# The notebooks' ctx calls, run with `seed` and the names a job binds (a, t, e, m, beta, st). 06 mirrors its cell;
# 05's own Term is its cell tagged "own-term", executed as it is.
TEACHER = {"01_baseline": "ctx.teacher()",  # 01-05 share it, with 01's baseline
           "06_efficientvit": "ctx.teacher(pretrained=init(ctx.params['teacher']))",
           "07_eurosat": "ctx.teacher()"}
PRELUDE_06 = ("init = lambda name: ex.try_pretrained(name, ctx.pretrained, num_classes=ctx.data.num_classes)\n"
              "head = {'drop_rate': ctx.drop_rate} if ctx.drop_rate is not None else {}\n")
BASELINE = "ctx.run('baseline', seeds=[seed])"
BASELINE_06 = "ctx.run('baseline', student_kwargs={**ctx.student_kwargs, **head}, pretrained=init(ctx.student), seeds=[seed])"
KD_06 = ("ctx.run('kd', student_kwargs={**ctx.student_kwargs, **head}, pretrained=init(ctx.student), alpha=ctx.alpha, "
         "temperature=ctx.temperature, seeds=[seed])")
KD = "ctx.run('kd', alpha=ctx.alpha, temperature=ctx.temperature, seeds=[seed])"
SWEEP = "ctx.run('kd', f'kd a={a} T={t}', alpha=a, temperature=t, seeds=[seed], **({'epochs': e} if e else {}))"
HIDDEN = "ctx.run('hidden', level_weights=ctx.level_weights, weights={'hidden': ctx.hidden_weight}, seeds=[seed])"
FITNET = "ctx.run('fitnet', weights={'fitnet': ctx.fitnet_weight}, seeds=[seed])"
METHOD = "ctx.run(m, alpha=ctx.alpha, temperature=ctx.temperature, seeds=[seed])"
AT_WEIGHT = "ctx.run('at', f'at β={beta:g}', weights={'at': beta}, seeds=[seed])"
SMALL_ALONE = "ctx.run('baseline', f'{ctx.small_student} alone', student=ctx.small_student, seeds=[seed])"
SHORT = ("ctx.run('baseline', f'baseline, {ctx.short_epochs} epochs', epochs=ctx.short_epochs, seeds=[seed])\n"
         "ctx.run('kd', f'kd, {ctx.short_epochs} epochs', alpha=ctx.alpha, temperature=ctx.temperature, "
         "epochs=ctx.short_epochs, seeds=[seed])")
CONVERGENCE = ("ctx.run('baseline', ex.CONVERGENCE_LABEL.format(epochs=ctx.convergence_epochs), "
               "epochs=ctx.convergence_epochs, seeds=ctx.params['seeds'][:1])  # ctx.convergence's run")
STUDENT = ("ctx.run(ctx.students_method, f'{st} ({ctx.students_method})', student=st, alpha=ctx.alpha, "
           "temperature=ctx.temperature, seeds=[seed])")


def run_calls(nb: str, p: dict) -> list[tuple[str, str, dict]]:
    """(job name, code, bindings) for every cacheable run that notebook `nb` makes under parameters `p`."""
    seeds = p["seeds"]
    if nb == "01_baseline":
        return [(f"01 baseline s{s}", BASELINE, {"seed": s}) for s in seeds]
    if nb == "02_logits":
        return ([(f"02 kd s{s}", KD, {"seed": s}) for s in seeds] +
                [(f"02 kd a={a} T={t} s{s}", SWEEP, {"seed": s, "a": a, "t": t, "e": p["sweep_epochs"]})
                 for a in p["sweep_alphas"] or [] for t in p["sweep_temperatures"] or [] for s in p["sweep_seeds"]])
    if nb == "03_hidden_state":
        return [(f"03 hidden s{s}", HIDDEN, {"seed": s}) for s in seeds]
    if nb == "04_regressor":
        return [(f"04 fitnet s{s}", FITNET, {"seed": s}) for s in seeds]
    if nb == "05_bonus":  # its own term: the notebook's cell itself, every seed in one call
        return ([(f"05 {m} s{s}", METHOD, {"seed": s, "m": m}) for m in p["methods"] for s in seeds] +
                [(f"05 at β={b:g} s{s}", AT_WEIGHT, {"seed": s, "beta": b}) for b in p["at_weights"] for s in seeds] +
                [("05 own term", profiles.notebook_cell(nb, "own-term"), {})])
    if nb == "06_efficientvit":
        return ([(f"06 baseline s{s}", BASELINE_06, {"seed": s}) for s in seeds] +
                [(f"06 kd s{s}", KD_06, {"seed": s}) for s in seeds])
    if nb == "07_eurosat":
        return ([(f"07 baseline s{s}", BASELINE, {"seed": s}) for s in seeds] +
                [(f"07 kd s{s}", KD, {"seed": s}) for s in seeds] +
                [(f"07 {st} s{s}", STUDENT, {"seed": s, "st": st}) for st in p["students"] for s in seeds] +
                [(f"07 {p['small_student']} s{s}", STUDENT, {"seed": s, "st": p["small_student"]}) for s in seeds
                 if p["small_student"] and p["small_student"] not in p["students"]] +
                [(f"07 {p['small_student']} alone s{s}", SMALL_ALONE, {"seed": s}) for s in seeds if p["small_student"]] +
                [(f"07 short s{s}", SHORT, {"seed": s}) for s in seeds if p["short_epochs"]] +
                [("07 convergence", CONVERGENCE, {})] * (p["convergence_epochs"] not in (None, p["epochs"])))
    raise SystemExit(f"error: {nb} has no parallel plan here; run it with kdcore report")


def run_code(code: str, namespace: dict, name: str) -> None:
    """exec `code` as Jupyter would, with its source in linecache: a Term it defines keeps a readable code, so
    its runs get the same store key here as in the notebook (terms.term_identity)."""
    filename = f"<kdcore.cotrain {name}>"
    linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)
    exec(compile(code, filename, "exec"), namespace)


def owner(nb: str) -> str:
    """The notebook whose data, teacher and baseline `nb` uses: 06 and 07 their own, 01-05 those of 01."""
    return nb if nb in TEACHER else "01_baseline"


def co_train(profile: str, notebooks: list[str], params: dict | None = None, log=print,
             group_size: int | None = None) -> int:
    """Collect the chosen notebooks' unstored runs and co-train them by seed, at most `group_size` at once
    (pending.groups); returns how many trained."""
    provenance.started_commit()  # the runs record the code they start with
    owners: dict[str, ex.Context] = {}
    with pending.collect() as runs:
        for nb in notebooks:
            base = owner(nb)
            given = {k: v for k, v in (params or {}).items() if k in profiles.notebook_defaults(nb)}
            ctx = ex.setup(nb, **{**given, "profile": profile})
            if base in owners:  # one data bundle and one teacher module, so runs can share their batches
                ctx.data, ctx.teacher_result = owners[base].data, owners[base].teacher_result
            else:
                owners[base] = ctx
            namespace = {"ctx": ctx, "ex": ex}
            exec(PRELUDE_06 if nb == "06_efficientvit" else "", namespace)
            if ctx.teacher_result is None:
                exec(TEACHER.get(nb, "ctx.teacher()"), namespace)
            for name, code, bindings in run_calls(nb, ctx.params):
                run_code(code, {**namespace, **bindings}, name)
        log(f"co-training: {len(runs)} runs to train in {len(pending.groups(runs, group_size))} groups")
        return pending.train(runs, log=log, size=group_size)
