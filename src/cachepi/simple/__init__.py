"""Pure Simple-API code: names, the page model, parsing, rendering, content negotiation."""
