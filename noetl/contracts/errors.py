"""Input that validates as JSON but cannot be taken: a 400, as the original API answered."""


class BadRequest(ValueError):
    pass
