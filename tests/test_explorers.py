"""The explorers under a headless notebook client (papermill, nbmake): their widgets must not make the client talk
back to the kernel while a cell runs. nbclient mimics a front end for Output widgets: output captured with
`with out:` or `out.clear_output()` makes it send comm messages to the kernel on the shell channel, and with
ipykernel 7 the cell's execute_reply was then lost now and then (notebook 04 waited forever in the main job)."""

import nbformat
from nbclient import NotebookClient

SETUP = "import ipywidgets as widgets\nfrom IPython.display import HTML, display\nout = widgets.Output()\n"


def comm_messages_sent_to_the_kernel(code: str) -> int:
    """Run one cell under nbclient and count the comm messages the client sends the kernel."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(SETUP + code)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    client = NotebookClient(nb, timeout=60, kernel_name="python3")
    sent = []
    with client.setup_kernel():
        send = client.kc.shell_channel.send
        client.kc.shell_channel.send = lambda msg: (sent.append(msg["header"]["msg_type"]), send(msg))[1]
        client.execute_cell(nb.cells[0], 0)
    assert not [o for o in nb.cells[0].outputs if o["output_type"] == "error"], nb.cells[0].outputs
    return sent.count("comm_msg")


def test_explorer_output_does_not_talk_back_to_the_kernel():
    code = ("from helpers.explorers import _set_outputs\n"
            "_set_outputs(out, {'text/html': '<b>report</b>', 'text/plain': 'report'})\n"
            "assert out.outputs[0]['data']['text/plain'] == 'report'\n"
            "display(widgets.VBox([widgets.Button(description='Run'), out]))")
    assert comm_messages_sent_to_the_kernel(code) == 0


def test_the_old_way_does_talk_back():
    """The twin: the pattern the explorers used before (and the hang it risked) is visible to this check."""
    code = "out.clear_output()\nwith out:\n    display(HTML('<b>report</b>'))\ndisplay(widgets.VBox([out]))"
    assert comm_messages_sent_to_the_kernel(code) > 0
