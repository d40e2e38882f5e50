"""The Faust worker: topic declarations and thin agents over the projection functions."""
