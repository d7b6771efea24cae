import pytest
import torch

from llmbook.research.trees import Tree, balanced_tree, package_tree

# A hand-drawn tree used throughout:
#
#         a (0)
#        /     \
#      b (1)   c (2)
#     /    \
#   d (3)  e (4)
SMALL = Tree(("a", "b", "c", "d", "e"), (-1, 0, 0, 1, 1))


@pytest.mark.parametrize(
    ("names", "parents"),
    [
        (("a", "b"), (-1,)),  # one parent short
        (("a",), (-1, 0)),  # one parent too many
        ((), ()),  # empty
        (("a", "b"), (1, -1)),  # the root is not node 0
        (("a", "b"), (0, -1)),  # node 0 has a parent
        (("a", "b"), (-1, -1)),  # two roots
        (("a", "b"), (-1, 1)),  # a node that is its own parent
        (("a", "b", "c"), (-1, 2, 0)),  # node 1's parent comes after it
        (("a", "b"), (-1, 5)),  # a parent that does not exist
    ],
)
def test_a_malformed_tree_is_refused_naming_parents(names, parents):
    with pytest.raises(ValueError, match="^parents:"):
        Tree(names, parents)


def test_len_and_depths_by_hand():
    assert len(SMALL) == 5
    assert SMALL.depths == [0, 1, 1, 2, 2]
    assert Tree(("r",), (-1,)).depths == [0]


def test_closure_lists_every_ancestor_descendant_pair():
    pairs = SMALL.closure()
    assert pairs.dtype == torch.long
    assert pairs.shape == (sum(SMALL.depths), 2)  # one row per (node, ancestor): 0+1+1+2+2 = 6
    want = {(0, 1), (0, 2), (0, 3), (1, 3), (0, 4), (1, 4)}
    assert {tuple(p) for p in pairs.tolist()} == want


def test_closure_of_a_single_node_is_empty_but_well_shaped():
    assert Tree(("r",), (-1,)).closure().shape == (0, 2)


def test_graph_distances_by_hand():
    dist = SMALL.graph_distances()
    want = torch.tensor(
        [
            [0, 1, 1, 2, 2],
            [1, 0, 2, 1, 1],
            [1, 2, 0, 3, 3],  # c reaches d and e through a and b
            [2, 1, 3, 0, 2],
            [2, 1, 3, 2, 0],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(dist, want, rtol=0, atol=0)


def test_graph_distances_are_symmetric_with_zero_diagonal_and_match_depths():
    tree = balanced_tree(3, 3)
    dist = tree.graph_distances()
    torch.testing.assert_close(dist, dist.T, rtol=0, atol=0)
    assert (dist.diagonal() == 0).all()
    assert dist[0].tolist() == [float(d) for d in tree.depths]  # from the root: the depth
    # Two leaves in different subtrees of the root are 2 * depth apart (0.0.0.0 and 0.2.2.2).
    assert dist[tree.names.index("0.0.0.0"), tree.names.index("0.2.2.2")] == 6


@pytest.mark.parametrize(("branching", "depth"), [(1, 0), (5, 0), (1, 4), (2, 3), (3, 3), (4, 2)])
def test_balanced_tree_has_one_plus_b_plus_up_to_b_to_the_depth_nodes(branching, depth):
    tree = balanced_tree(branching, depth)
    assert len(tree) == sum(branching**k for k in range(depth + 1))
    assert [tree.depths.count(k) for k in range(depth + 1)] == [
        branching**k for k in range(depth + 1)
    ]


def test_balanced_tree_3_3_has_40_nodes_and_depth_0_has_one():
    assert len(balanced_tree(3, 3)) == 1 + 3 + 9 + 27 == 40
    assert balanced_tree(4, 0) == Tree(("0",), (-1,))


def test_balanced_tree_names_and_parents_by_hand():
    tree = balanced_tree(2, 2)
    assert tree.names == ("0", "0.0", "0.1", "0.0.0", "0.0.1", "0.1.0", "0.1.1")
    assert tree.parents == (-1, 0, 0, 1, 1, 2, 2)  # breadth-first
    assert balanced_tree(1, 3) == Tree(("0", "0.0", "0.0.0", "0.0.0.0"), (-1, 0, 1, 2))


def test_balanced_tree_names_are_paths_from_the_root():
    tree = balanced_tree(3, 3)
    for i in range(1, len(tree)):
        parent, _, last = tree.names[i].rpartition(".")
        assert parent == tree.names[tree.parents[i]]
        assert last in {"0", "1", "2"}
    assert len(set(tree.names)) == len(tree)


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "2"])
def test_balanced_tree_refuses_a_bad_branching(bad):
    with pytest.raises(ValueError, match="^branching:"):
        balanced_tree(bad, 2)


@pytest.mark.parametrize("bad", [-1, True, 2.5, "2"])
def test_balanced_tree_refuses_a_bad_depth(bad):
    with pytest.raises(ValueError, match="^depth:"):
        balanced_tree(2, bad)


@pytest.fixture(scope="module")
def llmbook_tree():
    return package_tree("llmbook")


def test_package_tree_is_rooted_at_the_package(llmbook_tree):
    assert llmbook_tree.names[0] == "llmbook"
    assert llmbook_tree.parents[0] == -1
    assert len(set(llmbook_tree.names)) == len(llmbook_tree)


def test_package_tree_lists_a_function_under_its_module(llmbook_tree):
    names = llmbook_tree.names

    def parent_of(name):
        return names[llmbook_tree.parents[names.index(name)]]

    assert parent_of("llmbook.research.trees.balanced_tree") == "llmbook.research.trees"
    assert parent_of("llmbook.research.trees") == "llmbook.research"
    assert parent_of("llmbook.research") == "llmbook"
    assert parent_of("llmbook.research.trees.Tree") == "llmbook.research.trees"  # a class
    # A function wrapped by a decorator (torch.no_grad) is still found.
    assert parent_of("llmbook.research.hyperbolic.rsgd_step") == "llmbook.research.hyperbolic"


def test_package_tree_names_extend_their_parents_by_one_public_part(llmbook_tree):
    names, parents = llmbook_tree.names, llmbook_tree.parents
    for i in range(1, len(llmbook_tree)):
        assert names[i].startswith(names[parents[i]] + "."), names[i]
        assert names[i].rsplit(".", 1)[0] == names[parents[i]], names[i]
        assert not any(part.startswith("_") for part in names[i].split(".")[1:]), names[i]


def test_package_tree_leaves_out_what_a_module_imports(llmbook_tree):
    names = set(llmbook_tree.names)
    # tree_embedding imports math, torch, Tree and hyperbolic's distance/project/rsgd_step.
    for imported in ("math", "torch", "Tree", "distance", "project", "rsgd_step"):
        assert f"llmbook.research.tree_embedding.{imported}" not in names
    assert "llmbook.research.trees.torch" not in names
    assert "llmbook.research.trees.dataclass" not in names
    # Module-level constants are neither classes nor functions.
    assert "llmbook.research.tree_embedding.GEOMETRIES" not in names
    # What it defines is there.
    for defined in ("embed_tree", "pairwise_distances", "mean_average_precision", "distortion"):
        assert f"llmbook.research.tree_embedding.{defined}" in names
