"""What several test modules share: images, weights, servers, references, parity. No test
module imports another, and conftest.py holds fixtures only."""
