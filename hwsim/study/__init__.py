"""The study engine: specs -> trials -> executor -> results store -> plots."""
