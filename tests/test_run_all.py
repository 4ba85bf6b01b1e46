import nbformat

from lessonlib.run_all import main, run_notebook


def _notebook(path, code):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in code]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_run_all_executes_writes_outputs_and_reports_failures(tmp_path, capsys):
    _notebook(tmp_path / "01_ok.ipynb", ["x = 6 * 7", "print(x)"])
    _notebook(tmp_path / "02_bad.ipynb", ["assert 1 == 2, 'lesson claim failed'"])
    seconds, error = run_notebook(tmp_path / "01_ok.ipynb")
    assert error is None  # the seconds are for the table run_all prints, not for a test
    assert nbformat.read(tmp_path / "01_ok.ipynb", 4).cells[1].outputs[0]["text"] == "42\n"
    assert main(["--dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "01_ok.ipynb" in out and "FAILED" in out and "lesson claim failed" in out


def test_figures_are_drawn_even_when_the_shell_sets_a_non_inline_backend(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MPLBACKEND", "Agg")  # what CI exports: with it, plt.show() would leave no picture behind
    _notebook(tmp_path / "01_plot.ipynb", ["import matplotlib.pyplot as plt", "plt.plot([0, 1]); plt.show()"])
    assert main(["--dir", str(tmp_path)]) == 0
    outputs = nbformat.read(tmp_path / "01_plot.ipynb", 4).cells[1].outputs
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert "MPLBACKEND is ignored" in capsys.readouterr().out
