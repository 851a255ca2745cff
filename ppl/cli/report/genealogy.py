"""Export of the particle genealogy (``Posterior.genealogy``) to GraphML and JSON.

GraphML has no tuples and no null, so exported nodes are named
``"run/step/slot"``, a missing ``text`` becomes ``""`` and a missing
``resampled_from`` becomes ``-1``. The JSON form is networkx's node-link data
of the same graph.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import networkx as nx


def node_id(run: int, step: int, slot: int) -> str:
    """The exported name of node ``(run, step, slot)``.

    Example:
        >>> node_id(0, 3, 12)
        '0/3/12'
    """
    return f"{run}/{step}/{slot}"


def exportable(graph: nx.DiGraph) -> nx.DiGraph:
    """A copy of a genealogy with string node ids and no ``None`` attributes.

    Example:
        >>> nx.write_graphml(exportable(post.genealogy), "genealogy.graphml")
        >>> sorted(nx.read_graphml("genealogy.graphml").nodes)[:3]
        ['0/0/0', '0/0/1', '0/0/2']
    """
    out = nx.DiGraph(kind="pplscale genealogy")
    for (run, step, slot), data in graph.nodes(data=True):
        resampled_from = data.get("resampled_from")
        out.add_node(
            node_id(run, step, slot),
            run=int(run),
            step=int(step),
            slot=int(slot),
            text="" if data.get("text") is None else str(data["text"]),
            log_weight=float(data["log_weight"]),
            resampled_from=-1 if resampled_from is None else int(resampled_from),
        )
    for parent, child, data in graph.edges(data=True):
        out.add_edge(node_id(*parent), node_id(*child), resampled=bool(data.get("resampled")))
    return out


def write_graphml(graph: nx.DiGraph, path: str | Path) -> None:
    """Write a genealogy as GraphML (readable by ``networkx.read_graphml``, Gephi, yEd).

    Example:
        >>> write_graphml(post.genealogy, "genealogy.graphml")
        >>> graph = nx.read_graphml("genealogy.graphml")
        >>> graph.number_of_nodes() == post.genealogy.number_of_nodes(), graph.graph["kind"]
        (True, 'pplscale genealogy')
    """
    nx.write_graphml(exportable(graph), str(path))


def to_json(graph: nx.DiGraph) -> dict[str, Any]:
    """A genealogy as node-link JSON data (``networkx.node_link_graph`` reads it back).

    Example:
        >>> data = to_json(post.genealogy)
        >>> len(data["nodes"]), data["nodes"][0]["id"], data["nodes"][0]["resampled_from"]
        (24, '0/0/0', -1)
    """
    return nx.node_link_data(exportable(graph), edges="edges")


def write_json(graph: nx.DiGraph, path: str | Path) -> None:
    """Write ``to_json(graph)`` to ``path`` (``-inf`` weights as ``-Infinity``).

    Example:
        >>> write_json(post.genealogy, "genealogy.json")
        >>> data = json.loads(Path("genealogy.json").read_text())
        >>> graph = nx.node_link_graph(data, edges="edges")
        >>> graph.number_of_edges() == post.genealogy.number_of_edges()
        True
    """
    Path(path).write_text(json.dumps(to_json(graph)))
