"""The search space: candidate ops, genotypes, the supernet, the evaluation network and their deploy costs."""
