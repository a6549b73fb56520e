"""sdkit.ui headless: the form is the config, a bad field blocks Train, Train/Stop drive real tiny runs, the dashboard
updates in place, and in a real kernel the notebook's interrupt ends a panel run gracefully with a checkpoint.

Runs with ipywidgets 8 + ipykernel 7 and with Colab's ipywidgets 7.7.1 + ipykernel 6.17.1 (docs/UI.md).
"""
import os
import queue
import threading
import time
from pathlib import Path

import pytest

ipywidgets = pytest.importorskip("ipywidgets")

from sdkit import TrainConfig  # noqa: E402
from sdkit.config import GROUPS  # noqa: E402
from sdkit.run import Run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_form_is_generated_from_the_config_and_round_trips(base_config):
    from sdkit.ui.form import ConfigForm
    cfg = base_config.replace(sample_prompts=["a red square, on white", "a blue disc"], sample_seeds=[0, 3],
                              lora_alpha=8.0, prediction_type="epsilon")
    form = ConfigForm(cfg)
    assert form.valid, form.error
    assert form.config == cfg                                  # the form holds exactly the config
    W = ipywidgets
    assert isinstance(form["method"], W.Dropdown)              # choices -> Dropdown
    assert isinstance(form["center_crop"], W.Checkbox)         # bool -> Checkbox
    assert isinstance(form["lora_rank"], W.IntSlider)          # small int range -> slider
    assert isinstance(form["steps"], W.BoundedIntText)         # large int range -> bounded box
    assert isinstance(form["data"], W.Text) and isinstance(form["lr"], W.Text)
    assert form["sample_seeds"].value == "0, 3"                # list -> comma-separated text
    assert [form.tabs.get_title(i) for i in range(len(GROUPS))] == list(GROUPS)
    # each field's help text is its tooltip and is shown under it
    tip = form["lr"].tooltip if form["lr"].has_trait("tooltip") else form["lr"].description_tooltip
    assert tip.startswith("Learning rate")
    # setting widgets changes the config; setting the config fills the widgets
    form["steps"].value = 7
    form["lr"].value = "3e-4"
    form["sample_seeds"].value = "1, 2, 5"
    form["prediction_type"].value = ""                         # "(from the model)" -> None
    got = form.config
    assert (got.steps, got.lr, got.sample_seeds, got.prediction_type) == (7, 3e-4, [1, 2, 5], None)
    form.config = cfg
    assert form.config == cfg and form["steps"].value == cfg.steps
    # presets change only their fields
    form.apply_preset("CPU quick")
    assert form.config.model in ("mini", "tiny") and form.config.data == cfg.data


def test_invalid_field_shows_its_message_and_disables_train(base_config, tmp_path):
    from sdkit.ui.dashboard import TrainPanel
    panel = TrainPanel(base_config.replace(out=str(tmp_path / "never")))
    form = panel.form
    assert not panel.train_button.disabled
    form["lr_warmup_steps"].value = 100                        # more than steps=4
    assert panel.train_button.disabled
    assert "lr_warmup_steps:" in form.fields["lr_warmup_steps"].error.value
    assert all(not f.error.value for n, f in form.fields.items() if n != "lr_warmup_steps")
    panel.train_button.click()                                 # nothing starts with a bad config
    assert not (tmp_path / "never").exists()
    form["lr_warmup_steps"].value = 0
    form["lr"].value = "fast"                                  # text that is not a number
    assert panel.train_button.disabled and "lr: 'fast' is not a number" in form.fields["lr"].error.value
    form["lr"].value = "1e-3"
    form["data"].value = str(tmp_path / "missing")
    assert panel.train_button.disabled and "does not exist" in form.fields["data"].error.value
    form["data"].value = base_config.data
    assert not panel.train_button.disabled and form.error is None
    assert all(not f.error.value for f in form.fields.values())


def test_train_button_runs_a_real_training_and_the_dashboard_updates(base_config):
    from sdkit.ui.dashboard import Dashboard, TrainPanel
    cfg = base_config.replace(steps=12, sample_every=6, checkpoint_every=6)
    dash = Dashboard(min_redraw_s=0.0, max_draw_share=1.0)    # redraw at every log: the image must change
    panel = TrainPanel(cfg, dashboard=dash)
    seen = []
    dash.loss_image.observe(lambda ch: seen.append(ch["new"]), names="value")
    assert threading.current_thread() is threading.main_thread()
    panel.train_button.click()                                 # on the main thread: trains right here
    assert panel.last_error is None, panel.last_error
    run = panel.last_run
    assert run is not None and not run.stopped_early and run.final_step == 12
    assert sorted(run.samples) == [0, 6, 12] and [p.name for p in run.checkpoints] == ["step_000006", "step_000012"]
    pngs = [v for v in seen if v]
    assert len(set(pngs)) >= 3 and all(v[:8] == b"\x89PNG\r\n\x1a\n" for v in pngs)
    assert dash.baseline_image.value and dash.latest_image.value and dash.baseline_image.value != b""
    assert "step 12" in dash.latest_label.value and "step_000012" in dash.checkpoints_html.value
    assert dash.progress.value == 12 and "finished 12/12" in dash.status.value
    assert not panel.train_button.disabled and panel.stop_button.disabled


def test_stop_button_ends_a_run_with_a_checkpoint(base_config):
    from sdkit.ui.dashboard import TrainPanel
    panel = TrainPanel(base_config.replace(steps=500, sample_at_start=False))

    def click_stop_when_running():  # like a click handled on a subshell thread while the main thread trains
        deadline = time.time() + 120
        while time.time() < deadline and panel.dashboard.progress.value < 3:
            time.sleep(0.05)
        assert not panel.stop_button.disabled
        panel.stop_button.click()

    t = threading.Thread(target=click_stop_when_running)
    t.start()
    run = panel.run()
    t.join()
    assert run.stopped_early and 3 <= run.final_step < 500
    assert [p.name for p in run.checkpoints] == [f"step_{run.final_step:06d}"]
    assert "stopped at" in panel.dashboard.status.value and panel.stop_button.disabled


def test_text_fallback_and_show_without_widgets(base_config, capsys):
    import sdkit
    import sdkit.ui
    panel = sdkit.ui.train_panel(base_config, ui="text")      # what scripts / nbconvert with SDKIT_UI=text get
    assert type(panel).__name__ == "TextPanel"
    run = panel.run()
    out = capsys.readouterr().out
    assert "step      4  loss" in out and "checkpoints:" in out
    assert (run.path / "loss.png").stat().st_size > 1000
    grid = run.path / "samples_over_steps.png"
    from PIL import Image
    with Image.open(grid) as im:                               # two rows (step 0 and 4) of 2 prompts
        assert im.height >= 2 * 96
    sdkit.show(str(run.path))                                  # any run folder, by path
    assert "step_000004" in capsys.readouterr().out


# ---- a real kernel: the notebook's interrupt during panel.run() ---------------------------------------------------

CELL = """
import sdkit, sdkit.ui
cfg = sdkit.TrainConfig(model={model!r}, data={data!r}, steps=100000, resolution=32, out={out!r}, sample_steps=2,
                        tensorboard=False, lr=1e-3, sample_at_start=False)
panel = sdkit.ui.train_panel(cfg)
run = panel.run()
print("RESULT", run.stopped_early, run.final_step, [p.name for p in run.checkpoints])
"""


def _kernel(tmp_path):
    from jupyter_client import KernelManager
    km = KernelManager(kernel_name="python3")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("SDKIT_UI", None)
    km.start_kernel(env=env, cwd=str(tmp_path))
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return km, kc


def test_kernel_interrupt_stops_a_panel_run_gracefully(tiny_model, data8, tmp_path):
    out = tmp_path / "run"
    km, kc = _kernel(tmp_path)
    try:
        msg_id = kc.execute(CELL.format(model=str(tiny_model), data=str(data8), out=str(out)))
        # 1. widget updates arrive on IOPub while the cell runs, before its execute_reply
        progress_updates, comm_opens, interrupted, stdout = 0, 0, False, ""
        deadline = time.time() + 150
        while time.time() < deadline:
            try:
                msg = kc.get_iopub_msg(timeout=1)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "comm_open":
                comm_opens += 1
            elif kind == "comm_msg" and content["data"].get("method") == "update":
                state = content["data"].get("state", {})
                if isinstance(state.get("value"), int) and not isinstance(state.get("value"), bool):
                    progress_updates += 1                   # the IntProgress moving
            elif kind == "stream":
                stdout += content["text"]
            elif kind == "error":
                pytest.fail("\n".join(content["traceback"]))
            if not interrupted and progress_updates >= 3 and out.joinpath("metrics.jsonl").is_file():
                with pytest.raises(queue.Empty):
                    kc.get_shell_msg(timeout=0)             # no execute_reply yet: the cell is still training
                km.interrupt_kernel()                       # the notebook's ■
                interrupted = True
            if kind == "status" and content["execution_state"] == "idle":
                break
        assert interrupted, f"no live widget updates seen (comm_open={comm_opens}, updates={progress_updates})"
        reply = kc.get_shell_msg(timeout=30)
        assert reply["parent_header"]["msg_id"] == msg_id and reply["content"]["status"] == "ok", reply["content"]
        assert "RESULT True" in stdout, stdout
        run = Run(out)
        assert run.checkpoints and run.checkpoints[-1].name == f"step_{run.final_step:06d}"
        # 2. the kernel still answers
        reply = kc.execute_interactive("x = 6 * 7", timeout=30)
        assert reply["content"]["status"] == "ok"
        assert kc.execute_interactive("assert x == 42 and not panel.running", timeout=30)["content"]["status"] == "ok"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
