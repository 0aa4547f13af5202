"""The pixel pipeline: models trained from scratch on pixels (the `pixel` family), stage by
stage (`stats`, `synthetic`, `mos`), on random face-holding crops of the crop cache."""
